"""R-CNN fine-tuning of the GoogLeNet region classifier (``rcnn train``).

SGD with momentum, a step (or cosine) learning-rate schedule, class + box + auxiliary losses,
optional Polyak (EMA) weight averaging, atomic resumable checkpoints, CSV logs, and DDP under
``torchrun``. Resuming replays the exact batches (see detector.training.minibatches) and restores the RNG state,
so an interrupted run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from detector.common.atomic import check_writable, write_text
from detector.common.csv_log import CsvLog
from detector.common.distributed import DistContext, barrier, device_for, process_group
from detector.common.errors import UserError
from detector.common.precision import flush_denormals, prepare_input, prepare_model, resolve_precision
from detector.common.workers import loader_processes
from detector.config import Config, save_config
from detector.data.datasets import Dataset, load_dataset
from detector.modeling.box_regression import box_regression_loss
from detector.modeling.build import build_model
from detector.modeling.checkpoint import (
    check_classes,
    error_line,
    inference_weights,
    load_checkpoint,
    load_weights,
    model_settings,
    require_keys,
    save_checkpoint,
)
from detector.modeling.googlenet import RegionClassifier, RegionOutputs
from detector.modeling.svm import SvmHead, collect_features, train_svm_head
from detector.training.curves import FINETUNE_CURVES, plot_log_curves
from detector.training.minibatches import RegionBatch, SamplingSettings, TrainBatches
from detector.training.pretrain import resolve_init
from detector.training.schedules import finetune_lr_factor
from proposals.cache import cached_proposals, default_cache_dir

log = logging.getLogger(__name__)

#: what a resumable checkpoint (checkpoints/last.pt) holds beyond the inference keys
RESUME_KEYS = ("model", "classes", "optimizer", "scheduler", "rng", "iteration")
LOG_FIELDS = ("iteration", "loss", "cls_loss", "box_loss", "aux_loss", "fg_accuracy", "lr", "regions_per_s")


BATCHNORM_MODES = ("train", "frozen")


def batchnorm_frozen(config: Config) -> bool:
    """Whether the trunk's batch norm keeps the statistics of its initial weights
    (``train.batchnorm: frozen``; measured worse than training them on animals_voc, see README)."""
    mode = config.train.batchnorm
    if mode not in BATCHNORM_MODES:
        raise UserError(f"train.batchnorm {mode!r}: expected one of {', '.join(BATCHNORM_MODES)}")
    return mode == "frozen"


def freeze_batchnorm(module: nn.Module) -> None:
    """Put `module`'s batch-norm layers in eval mode: their running statistics are used and kept,
    their affine parameters still learn (mmdetection's ``norm_eval``). Minibatches of 2 images
    estimate the statistics of classification weights poorly."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


def region_losses(outputs: RegionOutputs, batch: RegionBatch, aux_weight: float, box_weight: float) -> dict[str, torch.Tensor]:
    """Cross-entropy on C+1 classes, smooth-L1 on the true class's deltas, weighted aux losses."""
    labels = batch.labels.to(outputs.class_logits.device)
    cls_loss = F.cross_entropy(outputs.class_logits.float(), labels)
    aux_loss = sum((F.cross_entropy(a.float(), labels) for a in outputs.aux_logits), cls_loss.new_zeros(()))
    box_loss = box_regression_loss(outputs.box_deltas, labels, batch.box_mask, batch.box_targets)
    total = cls_loss + aux_weight * aux_loss + box_weight * box_loss
    fg = labels > 0
    accuracy = (outputs.class_logits.argmax(1)[fg] == labels[fg]).float().mean() if fg.any() else cls_loss.new_zeros(())
    return {"loss": total, "cls_loss": cls_loss, "box_loss": box_loss, "aux_loss": aux_loss, "fg_accuracy": accuracy}


def sampling_settings(config: Config) -> SamplingSettings:
    """How fine-tuning minibatches are drawn, from the train and model sections (validated)."""
    train, model = config.train, config.model
    return SamplingSettings(
        train.images_per_batch, train.regions_per_batch, train.fg_fraction, train.fg_iou,
        (train.bg_iou_low, train.bg_iou_high), train.bbox_iou, train.flip,
        model.input_size, model.context_pad, model.mode, model.roi_short_side, model.roi_max_side,
        tuple(train.scales), train.photometric, train.fg_sampling, train.repeat_factor,
    )


class Trainer:
    """Owns the model, optimiser, schedule, EMA and run directory of one training run."""

    def __init__(self, config: Config, context: DistContext, resume: bool = False) -> None:
        self.config = config
        self.context = context
        self.run_dir = config.run_dir
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.dataset = load_dataset(config.data, config.data.train_split)
        self.classes = self.dataset.classes
        self.batches = self._batches()  # fails early on a split without objects
        self.precision = resolve_precision(config.train.precision, device_for(context))
        flush_denormals()
        if config.train.classifier not in ("softmax", "svm"):
            raise UserError(f"train.classifier {config.train.classifier!r}: expected softmax or svm")
        if config.train.classifier == "svm" and config.model.mode != "crop":
            raise UserError("train.classifier svm works on warped regions: set model.mode=crop")
        self._check_run_dir(resume)
        init = "random" if resume else resolve_init(config)
        self.frozen_batchnorm = batchnorm_frozen(config)
        m = config.model
        model = build_model(len(self.classes), init, m.aux_classifiers, m.dropout, m.mode, m.roi_layer)
        self.model: RegionClassifier = prepare_model(model, self.precision)
        train = config.train
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: finetune_lr_factor(train, i))
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
            if train.ema_decay > 0 else None
        )
        self.iteration = 0
        if resume:
            self._restore(load_checkpoint(self.last_path))
        self.network = (
            DistributedDataParallel(self.model, device_ids=[context.local_rank] if self.precision.device.type == "cuda" else None)
            if context.enabled else self.model
        )
        self.scaler = torch.amp.GradScaler(enabled=self.precision.dtype == torch.float16)

    # ----------------------------------------------------------------- run directory and state

    def _check_run_dir(self, resume: bool) -> None:
        if resume and not self.last_path.is_file():
            raise UserError(f"{self.last_path}: nothing to resume (no checkpoint in {self.run_dir})")
        if not resume and self.last_path.is_file():
            raise UserError(
                f"{self.run_dir} already holds a training checkpoint; pass --resume to continue it "
                "or choose another output_dir (--set output_dir=...)"
            )
        check_writable(self.last_path.parent, "run directory")

    def _restore(self, state: dict) -> None:
        where = str(self.last_path)
        require_keys(state, RESUME_KEYS, where)
        check_classes(state, self.classes, where)
        saved_model = model_settings(state, where)
        if saved_model != dataclasses.asdict(self.config.model):
            raise UserError(f"{where}: was trained with different model settings {saved_model}; "
                            "resume with the same config or start a new output_dir")
        load_weights(self.model, state["model"], where, "the model this config describes")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state.get("ema_state") is not None:
                self.ema.load_state_dict(state["ema_state"])
            torch.set_rng_state(state["rng"]["torch"])
            if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            self.iteration = int(state["iteration"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise UserError(f"{where}: cannot resume from its training state ({error_line(exc)})") from None
        log.info("resumed %s at iteration %d", self.last_path, self.iteration)

    def state(self, rng_state: dict) -> dict:
        """Everything needed to resume, plus what inference needs (classes, config)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "rng": rng_state,
            "classes": self.classes,
            "display_names": self.dataset.display_names,
            "config": dataclasses.asdict(self.config),
        }

    def save(self, rng_state: dict) -> None:
        if self.context.is_main:
            save_checkpoint(self.last_path, self.state(rng_state))

    # ----------------------------------------------------------------- the loop

    def _batches(self) -> TrainBatches:
        config, train = self.config, self.config.train
        batches = TrainBatches(
            self.dataset, _ProposalSource(config.proposals, default_cache_dir(config)), sampling_settings(config),
            train.iterations, config.seed, self.context.rank,
        )
        if train.extra_split:  # R-CNN on ILSVRC: extra positives from DET train's ground truth
            from detector.training.ilsvrc import ground_truth_only

            batches.add_ground_truth_only(ground_truth_only(config))
        return batches

    def _loader(self) -> DataLoader:
        workers = self.config.train.workers
        return DataLoader(
            Subset(self.batches, range(self.iteration, self.config.train.iterations)), batch_size=None,
            prefetch_factor=2 if workers else None,
            generator=torch.Generator().manual_seed(self.config.seed),  # keeps the global RNG (dropout) untouched
            **loader_processes(workers, __name__),
        )

    def step(self, batch: RegionBatch) -> dict[str, float]:
        """One SGD step on one minibatch; returns the losses as floats."""
        self.network.train()
        if self.frozen_batchnorm:
            freeze_batchnorm(self.model.trunk)
        inputs = prepare_input(batch.inputs, self.precision)
        with self.precision.autocast():
            outputs = self.network(*inputs)
        losses = region_losses(outputs, batch, self.config.train.aux_loss_weight, self.config.train.bbox_loss_weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {k: float(v.detach()) for k, v in losses.items()}

    def run(self) -> Path:
        """Train from the current iteration to the end; checkpoint on schedule and on Ctrl-C."""
        train = self.config.train
        if self.context.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            log.info("training %s on %s: %d images, %s", self.run_dir, self.dataset.name,
                     len(self.dataset.records), self.precision.description)
            if train.repeat_factor:
                factors = self.batches.class_repeat_factors()
                log.info("repeat-factor sampling (t=%g), r(c): %s", train.repeat_factor,
                         ", ".join(f"{name} {r:.2f}" for name, r in zip(self.dataset.display_names, factors)))
        logger = CsvLog(self.run_dir / "train_log.csv", LOG_FIELDS, self.iteration) if self.context.is_main else None
        progress = tqdm(total=train.iterations, initial=self.iteration, disable=not self.context.is_main,
                        desc="train", dynamic_ncols=True)
        rng_state = _rng_state()
        try:
            for batch in self._loader():
                rng_state = _rng_state()  # state at the start of this iteration, saved on interrupt
                start = time.perf_counter()
                values = self.step(batch)
                self.iteration += 1
                values["regions_per_s"] = len(batch.labels) * self.context.world_size / (time.perf_counter() - start)
                values["lr"] = self.optimizer.param_groups[0]["lr"]
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.3f}", rps=f"{values['regions_per_s']:.0f}")
                if logger and (self.iteration % train.log_every == 0 or self.iteration == train.iterations):
                    logger.write({"iteration": self.iteration, **values})
                if self.iteration % train.checkpoint_every == 0 or self.iteration == train.iterations:
                    rng_state = _rng_state()
                    self.save(rng_state)
                if train.val_every and self.iteration % train.val_every == 0 and self.context.is_main:
                    self._validate()
        except KeyboardInterrupt:
            self.save(rng_state)
            log.warning("interrupted: checkpoint saved at iteration %d; rerun with --resume", self.iteration)
            raise
        finally:
            progress.close()
        barrier(self.context)
        return self.finish()

    def finish(self) -> Path:
        """Write the inference checkpoint (fp16 weights without the auxiliary heads or optimiser
        state, plus SVMs when configured) and the training curve."""
        final = self.run_dir / "model_final.pt"
        if self.context.is_main:
            state = self.state(_rng_state())
            for key in ("optimizer", "scheduler", "ema_state", "rng"):
                state.pop(key)
            if self.config.train.classifier == "svm":
                state["svm"] = self._train_svms().state_dict()
            state["model"] = inference_weights(state["model"])
            if state["ema"] is not None:
                state["ema"] = inference_weights(state["ema"])
            save_checkpoint(final, state)
            plot_log_curves(self.run_dir / "train_log.csv", self.run_dir / "train_curve.png", FINETUNE_CURVES)
        return final


    @functools.cached_property
    def val_subset(self) -> Dataset:
        """The first `train.val_images` images of the test split (read once)."""
        dataset = load_dataset(self.config.data, self.config.data.test_split)
        return dataclasses.replace(dataset, records=dataset.records[: self.config.train.val_images or None])

    def _validate(self) -> float:
        """mAP of the current weights (EMA if used) on the first `val_images` test images, logged
        to val_log.csv; the global RNG is left as it was so training is unaffected."""
        from detector.inference.detector import Detector
        from detector.inference.scorers import FineTunedScorer
        from eval.metrics import make_evaluator, resolve_metric

        config, subset = self.config, self.val_subset
        network = copy.deepcopy(self.ema.module if self.ema is not None else self.model).eval()
        m = config.model
        scorer = FineTunedScorer(network, self.classes, self.dataset.display_names, m.input_size, m.context_pad,
                                 "validation", roi_sides=(m.roi_short_side, m.roi_max_side))
        detector = Detector([scorer], config.proposals, config.test, self.precision)
        evaluator = make_evaluator(resolve_metric(config.eval.metric, config.data.format), subset)
        rng = torch.get_rng_state()
        for record in tqdm(subset.records, desc="validate", leave=False, dynamic_ncols=True):
            proposals = self.batches.proposal_fn(record.path)
            evaluator.process(record.image_id, detector.detect(record.path, proposals).as_image_detections())
        torch.set_rng_state(rng)
        mean_ap = float(evaluator.evaluate().mAP)
        log_path = self.run_dir / "val_log.csv"
        if not log_path.is_file():
            write_text(log_path, "iteration,mAP\n")
        with log_path.open("a") as handle:
            handle.write(f"{self.iteration},{mean_ap:.6f}\n")
        log.info("iteration %d: validation mAP %.4f on %d images", self.iteration, mean_ap, len(subset.records))
        return mean_ap

    def _train_svms(self) -> SvmHead:
        """R-CNN's SVM + ridge stage on the features of the fine-tuned (EMA if used) network."""
        config, train = self.config, self.config.train
        network = self.ema.module if self.ema is not None else self.model
        regions = collect_features(
            network, self.dataset, self.batches.proposal_fn, config.model.input_size, config.model.context_pad,
            self.precision, train.svm_proposals_per_image, np.random.default_rng(config.seed),
        )
        return train_svm_head(regions, len(self.classes), train.svm_c, train.svm_neg_iou,
                              train.svm_mining_rounds, train.ridge_lambda, config.seed)


class _ProposalSource:
    """Picklable proposal provider for DataLoader workers: the content-addressed cache."""

    def __init__(self, proposal_config, cache_dir: Path) -> None:
        self.proposal_config = proposal_config
        self.cache_dir = cache_dir

    def __call__(self, image_path: Path) -> np.ndarray:
        return cached_proposals(image_path, self.proposal_config, self.cache_dir)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def train(config: Config, resume: bool = False) -> Path:
    """Fine-tune per `config` (resuming from the run directory's last checkpoint if asked)."""
    with process_group() as context:
        torch.manual_seed(config.seed)
        return Trainer(config, context, resume).run()
