"""The experiment behind ``rcnn run``: a graph of cached, resumable, content-keyed stages.

::

    [pretrain] ─┐
    proposals-<split> ─► train ─► detect-<split> ─► evaluate-<split> ─► report
    (train split and        (SVMs too when        (every split of eval.splits, default data.test_split;
     every eval split)       train.classifier=svm) ensembles: each member and the fused model)

``pretrain`` runs when ``model.init: pretrain``: classification pre-training on the ImageFolder
``pretrain.root`` (keyed by its settings and every image's bytes), whose export initialises training.

A stage unit is complete when ``stages/<unit>.json``, written atomically after its outputs,
records the key of its inputs and the SHA-1 of each output file. The key hashes the settings
that change the unit's outputs plus its upstream keys or output digests, and the proposals key
hashes every image's bytes and annotations, so a changed image, annotation or upstream setting
re-runs exactly the units downstream of it, and a damaged output is redone instead of used.
Training runs in ``train/<key>/`` (a fresh folder for other settings, never a checkpoint trained
differently) and resumes from its ``checkpoints/last.pt`` after a kill; proposals and detections
are cached per image, so their units resume image by image.

Run folder::

    config.yaml  run.log  stages/*.json  report.md  summary.json
    pretrain/<key>/                   model.init=pretrain: googlenet.pth + .json, checkpoints/, pretrain_log.csv
    proposals/                        proposal cache (unless proposals.cache_dir)
    train/<key>/                      checkpoints/last.pt, model_final.pt, train_log.csv, train_curve.png, config.yaml
    detections/<key>/                 per-image detection cache
    detections_<split>.npz            merged detections
    detections_<split>/               the same in each eval.save_formats (COCO, VOC, ILSVRC, YOLO results)
    eval/<split>/                     report.md, report.html, metrics.json, curves.npz, plots, gallery/, config.yaml
    members/<member>/...              an ensemble's per-member detections and evaluations
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from detector.common.atomic import write_text
from detector.common.distributed import DistContext, broadcast, process_group, refuse_shard_under_torchrun
from detector.common.errors import UserError
from detector.common.workers import shard
from detector.config import Config, detection_settings, load_config, save_config
from detector.data.datasets import Dataset, load_dataset
from detector.data.images import file_digest
from detector.experiment.run_folder import (
    Manifest,
    RunFolder,
    check_run_folder,
    content_key,
    fingerprint,
    logging_to,
    markdown_summary,
    share_files,
)
from eval.analysis import AnalysisInput, AnalysisOptions
from eval.analysis_report import error_summary
from eval.detections import save_detections
from eval.metrics import resolve_metrics, score
from eval.report import load_analysis, write_reports
from eval.result_formats import check_formats, save_results
from proposals.cache import default_cache_dir, parameter_key
from proposals.extract import extract_everywhere

log = logging.getLogger(__name__)

STAGES = ("pretrain", "proposals", "train", "detect", "evaluate", "report")
SHARDABLE = ("proposals", "detect")
#: Training settings that do not change the trained weights (left out of the train key).
TRAIN_BOOKKEEPING = ("checkpoint_every", "log_every", "workers", "val_every", "val_images",
                     "extra_split", "extra_boxes_per_class")
#: Pre-training settings that do not change the weights (the data enters the key by content).
PRETRAIN_BOOKKEEPING = ("root", "workers", "checkpoint_every")


# --------------------------------------------------------------------------- models


@dataclass
class Model:
    """What detects: one trained model, an ensemble member, or the fused ensemble."""

    name: str
    weights: list[Path]
    digests: list[str]
    folder: Path  #: where its detections_<split>.npz and eval/<split>/ go


def train_model(config: Config, resume: bool) -> Path:
    """Fine-tune per `config` (with the ILSVRC extra positives when train.extra_split is set)."""
    from detector.training.finetune import train

    return train(config, resume)


def member_config(entry: str) -> Config:
    """An ensemble member: a `rcnn run` folder (its config.yaml, run in place) or a config."""
    folder = Path(entry).expanduser()
    if (folder / "config.yaml").is_file():
        return dataclasses.replace(load_config(folder / "config.yaml"), output_dir=str(folder))
    config = load_config(entry)
    if config.ensemble:
        raise UserError(f"ensemble member {entry} is itself an ensemble; list its members instead")
    return config


# --------------------------------------------------------------------------- the pipeline


class Pipeline:
    """The stages of one experiment over its run folder; `stages` limits what may run, `shard`
    (i, n) runs only the shardable stages on every n-th image."""

    def __init__(self, config: Config, stages: tuple[str, ...] = STAGES, shard: tuple[int, int] = (0, 1),
                 workers: int = 1, context: DistContext = DistContext()) -> None:
        if config.train.extra_split and config.ensemble:
            raise UserError("train.extra_split applies to a trained model, not to an ensemble's run")
        self.config = config
        self.stages = stages
        self.shard = shard
        self.workers = workers
        self.folder = RunFolder(config.run_dir)
        self.context = context
        self.is_main = context.is_main
        self._datasets: dict[str, Dataset] = {}
        self._keys: dict[str, str] = {}
        self._models: list[Model] | None = None
        self.done: dict[str, Manifest] = {}  #: units complete so far, in order

    @property
    def eval_splits(self) -> list[str]:
        return list(dict.fromkeys(self.config.eval.splits or [self.config.data.test_split]))

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    def dataset(self, split: str) -> Dataset:
        if split not in self._datasets:
            self._datasets[split] = load_dataset(self.config.data, split)
        return self._datasets[split]

    # ----------------------------------------------------------------- running units

    def _unit(self, unit: str, stage: str, key: str, work: Callable[[], tuple[list[Path], dict]],
              everyone: bool = True) -> Manifest | None:
        """The unit's manifest: reused when valid, else produced by `work` if `stage` may run.
        Sharded runs do their share of the work and return None (no manifest). Under torchrun
        every rank calls it (unless not `everyone`: rank 0 alone): rank 0's run folder decides,
        every rank works, rank 0 records the manifest and every rank receives it and the outputs
        it lacks (no shared disk needed)."""
        context = self.context if everyone else DistContext()
        manifest = broadcast(self.folder.valid(unit, key) if self.is_main else None, context, unit)
        if manifest is not None:
            log.info("%s: complete, reused", unit)
            return self._done(manifest, context)
        if stage not in self.stages or (self.sharded and stage not in SHARDABLE):
            raise UserError(f"stage {unit} is not complete for these settings; run it first "
                            f"(rcnn run without --stages/--shard, or --stages {stage})")
        log.info("%s: running", unit)
        start = time.perf_counter()
        outputs, info = work()
        if self.sharded:
            return None
        if self.is_main:
            info["seconds"] = round(time.perf_counter() - start, 3)
            manifest = self.folder.complete(unit, key, outputs, info)
        return self._done(broadcast(manifest, context, unit), context)

    def _done(self, manifest: Manifest, context: DistContext) -> Manifest:
        """Record a complete unit; under torchrun, first copy rank 0's outputs this rank lacks."""
        if context.enabled:
            share_files(self.folder.root, manifest.outputs, context, manifest.unit)
        self.done[manifest.unit] = manifest
        return manifest

    # ----------------------------------------------------------------- proposals

    def proposals_key(self, split: str) -> str:
        """Key of a split's proposals: the search parameters and the split's content."""
        if split not in self._keys:
            dataset = self.dataset(split)
            self._keys[split] = content_key(
                parameter_key(self.config.proposals), fingerprint(dataset.records, dataset.name, dataset.classes))
        return self._keys[split]

    def proposals(self, split: str) -> Manifest | None:
        return self._unit(f"proposals-{split}", "proposals", self.proposals_key(split),
                          lambda: ([], self._extract(split)))

    def _extract(self, split: str) -> dict[str, Any]:
        records = shard(self.dataset(split).records, *self.shard)
        results = extract_everywhere(records, self.config.proposals, default_cache_dir(self.config), self.context,
                                     workers=self.workers, description=f"proposals {split}")
        failed = [r for r in results if r.error]
        if failed:
            raise UserError(f"proposals {split}: {len(failed)} of {len(results)} images failed "
                            f"(first: {failed[0].error}); the others are cached, fix it and rerun")
        computed = sum(not r.cached for r in results)
        return {"images": len(results), "computed": computed,
                "boxes_per_image": round(sum(r.n_boxes for r in results) / max(1, len(results)), 1)}

    # ----------------------------------------------------------------- pre-training

    @functools.cached_property
    def pretrain_key(self) -> str:
        """Key of the classification weights: pre-training settings, seed, every image's bytes."""
        from detector.data.imagefolder import read_image_folder

        settings = self.config.pretrain
        train = read_image_folder(settings.root, settings.train_split)
        val = read_image_folder(settings.root, settings.val_split, train.classes)
        digest = hashlib.sha1(json.dumps(train.classes).encode())
        for path, label in train.samples + val.samples:
            digest.update(f"{path.parent.parent.name}/{path.name}\0{label}\0{file_digest(path, length=40)}".encode())
        kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in PRETRAIN_BOOKKEEPING}
        return content_key(kept, self.config.seed, digest.hexdigest())

    def pretrained(self) -> Manifest | None:
        """The pre-training unit when model.init is ``pretrain``, else None (checked once a run:
        the run, the train key and training all ask for it)."""
        if self.config.model.init != "pretrain":
            return None
        if "pretrain" in self.done:
            return self.done["pretrain"]
        key = self.pretrain_key
        return self._unit("pretrain", "pretrain", key, lambda: self._pretrain(self.folder.root / "pretrain" / key))

    def _pretrain(self, folder: Path) -> tuple[list[Path], dict]:
        from detector.training.pretrain import pretrain

        resume = (folder / "checkpoints" / "last.pt").is_file()
        exported = pretrain(self.config, resume, folder)
        metrics = json.loads(exported.with_suffix(".json").read_text())["metrics"]
        return [exported, exported.with_suffix(".json")], {
            "folder": str(folder.relative_to(self.folder.root)), "resumed": resume,
            "epochs": self.config.pretrain.epochs, **{k: v for k, v in metrics.items() if k != "epoch"}}

    # ----------------------------------------------------------------- training

    def train_key(self) -> str:
        """Key of the fine-tuned model: model and training settings, seed, training data."""
        config = self.config
        train = {k: v for k, v in dataclasses.asdict(config.train).items() if k not in TRAIN_BOOKKEEPING}
        extra = None
        if config.train.extra_split:
            from detector.training.ilsvrc import ground_truth_only

            records = ground_truth_only(config)
            extra = fingerprint(records, config.train.extra_split, self.dataset(config.data.train_split).classes)
        pretrained = self.pretrained()
        return content_key(dataclasses.asdict(config.model), train, config.seed,
                           self.proposals_key(config.data.train_split), extra,
                           pretrained.outputs if pretrained else None)

    def trained(self) -> Manifest | None:
        key = self.train_key()
        return self._unit("train", "train", key, lambda: self._train(self.folder.root / "train" / key))

    def _train(self, folder: Path) -> tuple[list[Path], dict]:
        resume = (folder / "checkpoints" / "last.pt").is_file()
        config = dataclasses.replace(self.config, output_dir=str(folder))
        pretrained = self.pretrained()
        if pretrained is not None:
            exported = next(p for p in pretrained.outputs if p.endswith(".pth"))
            config = dataclasses.replace(config, model=dataclasses.replace(
                config.model, init=str(self.folder.root / exported)))
        final = train_model(config, resume)
        return [final], {"folder": str(folder.relative_to(self.folder.root)), "resumed": resume,
                         "iterations": self.config.train.iterations}

    def models(self) -> list[Model]:
        """The models to detect with: the trained one, or each ensemble member then the ensemble."""
        if self._models is None:
            self._models = self._ensemble() if self.config.ensemble else [self._own_model()]
        return self._models

    def _own_model(self) -> Model:
        (relative, digest), = self.trained().outputs.items()
        return Model("model", [self.folder.root / relative], [digest], self.folder.root)

    def _ensemble(self) -> list[Model]:
        configs = [member_config(entry) for entry in self.config.ensemble]
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise UserError(f"ensemble members need distinct names, got {names}")
        if any(c.run_dir.resolve() == self.folder.root.resolve() for c in configs):
            raise UserError("an ensemble member's output_dir is the ensemble's own run folder; give it its own")
        members = []
        for member in self._member_pipelines(configs):
            if "proposals" in member.stages:
                member.proposals(member.config.data.train_split)
            model = member._own_model()
            name = member.config.name
            members.append(dataclasses.replace(model, name=name, folder=self.folder.root / "members" / name))
        fused = Model("ensemble", [w for m in members for w in m.weights], [d for m in members for d in m.digests],
                      self.folder.root)
        return members + [fused]

    def _member_pipelines(self, configs: list[Config]) -> list["Pipeline"]:
        """Pipelines of ensemble members (their own run folders) limited to proposals and training."""
        pipelines = []
        for config in configs:
            check_run_folder(config.run_dir)
            if self.is_main:
                save_config(config, config.run_dir / "config.yaml")
            stages = tuple(s for s in self.stages if s in ("pretrain", "proposals", "train"))
            pipelines.append(Pipeline(config, stages, workers=self.workers, context=self.context))
        return pipelines

    # ----------------------------------------------------------------- detection

    def _unit_name(self, stage: str, split: str, model: Model) -> str:
        return f"{stage}-{split}" if model.folder == self.folder.root else f"{stage}-{split}@{model.name}"

    def detections(self, split: str, model: Model) -> Manifest | None:
        test = detection_settings(self.config.test)
        formats = self.config.eval.save_formats  # keyed only when given: older run folders keep their keys
        key = content_key(test, self.proposals_key(split), model.digests, *([formats] if formats else []))
        return self._unit(self._unit_name("detect", split, model), "detect", key, lambda: self._detect(split, model))

    def _detect(self, split: str, model: Model) -> tuple[list[Path], dict]:
        """Detect `split`: detections_<split>.npz, and each eval.save_formats into detections_<split>/."""
        from detector.inference.detector import Detector
        from detector.inference.split_detection import detect_split, detection_key

        check_formats(self.config.eval.save_formats, "eval.save_formats")
        weights = [str(w) for w in model.weights]
        detector = Detector.from_weights(weights, self.config)
        cache = self.folder.root / "detections" / detection_key(detector, weights)
        dataset = self.dataset(split)
        dets = detect_split(detector, dataset, cache, default_cache_dir(self.config), *self.shard, self.context)
        path, extra = model.folder / f"detections_{split}.npz", []
        if dets is None:  # torchrun rank > 0: rank 0 has them all
            return [], {}
        if not self.sharded:
            save_detections(path, dets, dataset.classes, dataset.name)
            for format in self.config.eval.save_formats:
                extra += save_results(model.folder / f"detections_{split}", format, dets, dataset)
        return [path, *extra], {"images": len(dets), "detections": sum(len(d) for d in dets.values())}

    # ----------------------------------------------------------------- evaluation and report

    def evaluation(self, split: str, model: Model) -> Manifest:
        detect = self.detections(split, model)
        metrics = resolve_metrics(self.config.eval.metric, self.config.eval.extra_metrics, self.config.data.format)
        analysis = AnalysisOptions.from_config(self.config.eval)
        key = content_key(metrics, detect.key, detect.outputs, analysis.key())
        relative = next(iter(detect.outputs))  # detections_<split>.npz; then any other formats
        return self._unit(self._unit_name("evaluate", split, model), "evaluate", key,
                          lambda: self._evaluate(split, model, metrics, self.folder.root / relative), everyone=False)

    def _evaluate(self, split: str, model: Model, metrics: list[str], detections_file: Path) -> tuple[list[Path], dict]:
        """Score the split's detections with each metric (the first is the run's mAP)."""
        from eval.detections import load_detections

        dataset = self.dataset(split)
        dets, _ = load_detections(detections_file, dataset.classes, dataset.name)
        start = time.perf_counter()
        results = [score(dets, dataset, metric) for metric in metrics]
        out = model.folder / "eval" / split
        save_config(self.config, out / "config.yaml")
        settings = {"config": self.config.name, "model": model.name, "split": split,
                    "weights": [str(w) for w in model.weights], "detections file": str(detections_file)}
        report = write_reports(out, results, dataset.name, settings, {"evaluate": time.perf_counter() - start},
                               AnalysisInput(dets, dataset, AnalysisOptions.from_config(self.config.eval)))
        for result in results:
            log.info("%s %s: mAP (%s) %.4f", model.name, dataset.name, result.metric, result.mAP)
        return [out / "metrics.json", report], {"mAP": results[0].mAP, "metric": results[0].metric,
                                                 "extra": {r.metric: r.mAP for r in results[1:]},
                                                 "errors": error_summary(load_analysis(out))}

    def report(self, evaluations: dict[str, Manifest]) -> Manifest:
        key = content_key({unit: m.outputs for unit, m in evaluations.items()})
        return self._unit("report", "report", key, lambda: self._write_report(evaluations), everyone=False)

    def _write_report(self, evaluations: dict[str, Manifest]) -> tuple[list[Path], dict]:
        manifests = {unit: dataclasses.asdict(m) for unit, m in self.done.items()}
        summary = {"config": self.config.name, "mAP": {u: m.info["mAP"] for u, m in evaluations.items()},
                   "stages": manifests}
        write_text(self.folder.root / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text(self.folder.root / "report.md", markdown_summary(self.config.name, evaluations, manifests))
        return [self.folder.root / "summary.json", self.folder.root / "report.md"], {}

    # ----------------------------------------------------------------- everything

    def run(self) -> Manifest | None:
        """Run (or reuse) every unit the selected stages need, in order; the report manifest, or
        None when the selection stops earlier."""
        config = self.config
        if "pretrain" in self.stages and not config.ensemble:
            self.pretrained()
        if "proposals" in self.stages:
            splits = self.eval_splits if config.ensemble else [config.data.train_split, *self.eval_splits]
            for split in dict.fromkeys(splits):
                self.proposals(split)
        if not {"train", "detect", "evaluate", "report"} & set(self.stages):
            return None
        models = self.models()
        if not {"detect", "evaluate", "report"} & set(self.stages):
            return None
        pairs = [(split, model) for split in self.eval_splits for model in models]
        if self.sharded or not self.is_main or not {"evaluate", "report"} & set(self.stages):
            for split, model in pairs:  # torchrun ranks > 0 detect; rank 0 evaluates what they found
                self.detections(split, model)
            return None
        evaluations = {self._unit_name("evaluate", s, m): self.evaluation(s, m) for s, m in pairs}
        return self.report(evaluations) if "report" in self.stages else None


def run_experiment(config: Config, stages: tuple[str, ...] = STAGES, shard: tuple[int, int] = (0, 1),
                   workers: int = 1) -> Manifest | None:
    """Check the run folder, save the resolved config, and run the pipeline with a log file."""
    check_stage_selection(stages, shard)
    root = config.run_dir
    check_run_folder(root)
    try:
        with process_group() as context:
            pipeline = Pipeline(config, stages, shard, workers, context)
            if pipeline.is_main:
                save_config(config, root / "config.yaml")
            with logging_to(root / ("run.log" if pipeline.is_main else f"run.rank{context.rank}.log")):
                return pipeline.run()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"{root}: disk full ({exc.filename or 'while writing'}); free space and rerun, "
                            "finished stages are kept") from None
        raise


def check_stage_selection(stages: tuple[str, ...], shard: tuple[int, int]) -> None:
    """Raise UserError for selections that cannot work: unknown stages, --shard on unshardable
    stages, --shard under torchrun (whose ranks split the images themselves)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserError(f"--stages {','.join(stages)}: expected some of {', '.join(STAGES)}")
    if shard[1] > 1 and set(stages) - set(SHARDABLE):
        raise UserError(f"--shard runs only the {' and '.join(SHARDABLE)} stages; pass --stages proposals detect")
    refuse_shard_under_torchrun(shard[1] > 1)
