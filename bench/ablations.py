"""Ablation table: one ``rcnn run`` per row (a config plus overrides), then a Markdown table of
every row's scores, read back from each row's run folder.

    python bench/ablations.py bench/ablations/aquarium.yaml --set model.init=PATH.pth
    python bench/ablations.py bench/ablations/aquarium.yaml --rows baseline fine-level --table-only

The YAML file names the base ``config``, the ``workdir`` holding one run folder per row, the
overrides every row gets (``shared``; ``--set`` adds more) and the ``rows`` (name -> list of
``KEY=VALUE`` overrides, as ``rcnn run --set`` takes them). Rows run one after another, each
resumable: ``rcnn run`` reuses finished stages and resumes training from its last checkpoint,
so rerunning the same command after a kill continues where it stopped. Give the rows one
proposal cache (``proposals.cache_dir`` in ``shared``) so that only the first searches.

The table (stdout and ``<workdir>/ablations.md``) has, per evaluated split, the run's primary
mAP, COCO AP / AP50 / AP75 / AP by object size when the run scores ``coco`` too, and the
training minutes; a row that has not finished shows its missing numbers as ``-``.
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
    """The ablation file: {config, workdir, shared: [..], rows: {name: [..]}}; SystemExit naming
    the file and the key when it is malformed."""
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None
    if not isinstance(plan, dict) or not {"config", "workdir", "rows"} <= set(plan):
        raise SystemExit(f"error: {path}: expected a mapping with config, workdir, rows (and shared)")
    rows = plan["rows"]
    if not isinstance(rows, dict) or not rows:
        raise SystemExit(f"error: {path}: rows must map row names to lists of KEY=VALUE overrides")
    for name, overrides in {"shared": plan.get("shared") or [], **rows}.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise SystemExit(f"error: {path}: {name}: expected a list of KEY=VALUE strings")
    return plan


def run_row(plan: dict, name: str, extra: list[str], workers: int) -> int:
    """``rcnn run`` of one row (its log in the run folder's run.log); the exit status."""
    overrides = [*(plan.get("shared") or []), *extra, *(plan["rows"][name] or [])]
    command = [sys.executable, "-m", "detector", "run", "--config", plan["config"],
               "--workdir", str(Path(plan["workdir"]) / name), "--workers", str(workers)]
    for override in overrides:
        command += ["--set", override]
    print(f"== {name}: {' '.join(command[2:])}", flush=True)
    return subprocess.call(command)


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
        cells = [name, " ".join(f"`{o}`" for o in plan["rows"][name] or []) or "(shared only)"]
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
    failed = [] if args.table_only else [n for n in names if run_row(plan, n, args.set, args.workers) != 0]
    text = table(plan, names, args.splits)
    Path(plan["workdir"]).mkdir(parents=True, exist_ok=True)
    (Path(plan["workdir"]) / "ablations.md").write_text(text, encoding="utf-8")
    print(text, end="")
    if failed:
        print(f"error: rows failed: {', '.join(failed)} (their run.log says why; rerun to resume)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
