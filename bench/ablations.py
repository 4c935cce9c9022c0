"""Ablation table: one experiment per row, then a Markdown table of every row's scores, read
back from each row's run folder.

    python bench/ablations.py bench/ablations/aquarium.yaml --set model.init=PATH.pth
    python bench/ablations.py bench/ablations/aquarium.yaml --rows baseline fine-level --table-only

The YAML file names the base ``config``, the ``workdir`` holding one folder per row, the
overrides every row gets (``shared``; ``--set`` adds more) and the ``rows``, each one of:

- a list of ``KEY=VALUE`` overrides (as ``rcnn run --set`` takes them): an ``rcnn run``;
- ``{from: ROW, set: [KEY=VALUE, ...]}``: ROW's trained model re-scored by ``rcnn eval`` with
  test-time settings changed (no training);
- ``{detections: PATH, format: coco}``: another tool's results scored by ``rcnn eval`` (``{split}``
  in PATH is replaced by each split), so peers and our rows meet the same evaluator.

Rows run one after another, each resumable: ``rcnn run`` reuses finished stages and resumes
training from its last checkpoint, ``rcnn eval`` its cached detections, so rerunning the same
command after a kill continues where it stopped. Give the rows one proposal cache
(``proposals.cache_dir`` in ``shared``) so that only the first searches.

The table (stdout and ``<workdir>/ablations.md``) has, per split, the primary mAP, COCO AP /
AP50 / AP75 / AP by object size when ``coco`` is scored too, and the training minutes; numbers
a row does not have yet show as ``-``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def read_plan(path: Path) -> dict:
    """The ablation file: {config, workdir, shared: [..], rows: {name: row}}; SystemExit naming
    the file and the row when it is malformed."""
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None
    if not isinstance(plan, dict) or not {"config", "workdir", "rows"} <= set(plan):
        raise SystemExit(f"error: {path}: expected a mapping with config, workdir, rows (and shared)")
    rows = plan["rows"]
    if not isinstance(rows, dict) or not rows:
        raise SystemExit(f"error: {path}: rows must map row names to lists of KEY=VALUE overrides")
    _check_overrides(path, "shared", plan.get("shared") or [])
    for name, row in rows.items():
        if isinstance(row, dict):
            if not ({"from"} <= set(row) <= {"from", "set"} or {"detections"} <= set(row) <= {"detections", "format"}):
                raise SystemExit(f"error: {path}: {name}: expected {{from: ROW, set: [..]}} or "
                                 "{detections: PATH, format: F}")
            if row.get("from") is not None and row["from"] not in rows:
                raise SystemExit(f"error: {path}: {name}: from {row['from']!r} is not a row")
            _check_overrides(path, name, row.get("set") or [])
        else:
            _check_overrides(path, name, row or [])
    return plan


def _check_overrides(path: Path, name: str, overrides) -> None:
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SystemExit(f"error: {path}: {name}: expected a list of KEY=VALUE strings")


def _with_sets(command: list[str], overrides: list[str]) -> list[str]:
    for override in overrides:
        command += ["--set", override]
    return command


def run_row(plan: dict, name: str, extra: list[str], splits: list[str], workers: int) -> int:
    """One row: ``rcnn run``, or ``rcnn eval`` of each split (logs in the row's folder); the exit
    status (the first non-zero one)."""
    row, folder = plan["rows"][name], Path(plan["workdir"]) / name
    shared = [*(plan.get("shared") or []), *extra]
    if not isinstance(row, dict):
        command = _with_sets([sys.executable, "-m", "detector", "run", "--config", plan["config"],
                              "--workdir", str(folder), "--workers", str(workers)], [*shared, *(row or [])])
        print(f"== {name}: {' '.join(command[2:])}", flush=True)
        return subprocess.call(command)
    if "from" in row:
        model = trained_model(Path(plan["workdir"]) / row["from"])
        if model is None:
            print(f"error: {name}: row {row['from']} has no trained model yet", file=sys.stderr)
            return 1
        source = ["--weights", str(model)]
    for split in splits:
        if "detections" in row:
            source = ["--detections", row["detections"].replace("{split}", split), "--format", row.get("format", "auto")]
        command = _with_sets([sys.executable, "-m", "detector", "eval", "--config", plan["config"], "--split", split,
                              *source, "--out", str(folder / "eval" / split)],
                             [*shared, f"output_dir={folder}", *(row.get("set") or [])])  # caches in the row's folder
        print(f"== {name} {split}: {' '.join(command[2:])}", flush=True)
        status = subprocess.call(command)
        if status:
            return status
    return 0


def trained_model(run_dir: Path) -> Path | None:
    """The model file a finished ``rcnn run`` folder trained (its train stage's output), or None."""
    manifest = run_dir / "stages" / "train.json"
    if not manifest.is_file():
        return None
    outputs = json.loads(manifest.read_text(encoding="utf-8"))["outputs"]
    return run_dir / next(iter(outputs))


def row_scores(run_dir: Path) -> dict:
    """{split: {"mAP", "metric", AP..APl}} and "train_min" of a row's run folder (what exists)."""
    scores: dict = {}
    for metrics_file in sorted(run_dir.glob("eval/*/metrics.json")):
        data = json.loads(metrics_file.read_text(encoding="utf-8"))
        split = {"mAP": data.get("mAP"), "metric": data.get("metric")}
        coco = metrics_file.parent / "coco" / "metrics.json"
        if coco.is_file():
            coco_data = json.loads(coco.read_text(encoding="utf-8"))
            split |= {"AP": coco_data.get("mAP"), **{k: coco_data["extras"].get(k) for k in COCO_COLUMNS[1:]}}
        scores[metrics_file.parent.name] = split
    train = run_dir / "stages" / "train.json"
    if train.is_file():
        scores["train_min"] = json.loads(train.read_text())["info"].get("seconds", 0) / 60
    return scores


def describe(row) -> str:
    """A row's overrides (or source) for the table."""
    if isinstance(row, dict):
        if "detections" in row:
            return f"results `{row['detections']}`"
        return " ".join([f"model of {row['from']}:", *(f"`{o}`" for o in row.get("set") or [])])
    return " ".join(f"`{o}`" for o in row or []) or "(shared only)"


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(plan: dict, names: list[str], splits: list[str]) -> str:
    """The Markdown table of `names`' rows over `splits`."""
    header = ["row", "overrides"]
    for split in splits:
        header += [f"{split} mAP", *(f"{split} {c}" for c in COCO_COLUMNS)]
    header.append("train min")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for name in names:
        scores = row_scores(Path(plan["workdir"]) / name)
        cells = [name, describe(plan["rows"][name])]
        for split in splits:
            got = scores.get(split, {})
            cells += [_cell(got.get("mAP")), *(_cell(got.get(c)) for c in COCO_COLUMNS)]
        cells.append(f"{scores['train_min']:.0f}" if "train_min" in scores else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path, help="ablation YAML (see the module docstring)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override every row gets, after the file's shared ones")
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all, in the file's order)")
    parser.add_argument("--splits", nargs="+", default=["val", "test"], help="splits in the table")
    parser.add_argument("--workers", type=int, default=2, help="proposal processes of each run")
    parser.add_argument("--table-only", action="store_true", help="run nothing; tabulate what exists")
    args = parser.parse_args(argv)
    plan = read_plan(args.plan)
    names = args.rows or list(plan["rows"])
    unknown = [n for n in names if n not in plan["rows"]]
    if unknown:
        raise SystemExit(f"error: {args.plan}: no row {', '.join(unknown)} (rows: {', '.join(plan['rows'])})")
    failed = [] if args.table_only else [n for n in names if run_row(plan, n, args.set, args.splits, args.workers) != 0]
    text = table(plan, names, args.splits)
    Path(plan["workdir"]).mkdir(parents=True, exist_ok=True)
    (Path(plan["workdir"]) / "ablations.md").write_text(text, encoding="utf-8")
    print(text, end="")
    if failed:
        print(f"error: rows failed: {', '.join(failed)} (their run.log says why; rerun to resume)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
