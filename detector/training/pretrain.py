"""Classification pre-training of GoogLeNet on an ImageFolder (``rcnn pretrain``): the
"classification weights" that R-CNN fine-tunes, made where ImageNet weights cannot be fetched.

torchvision's GoogLeNet topology with both auxiliary classifiers (loss weight 0.3) is trained
with the paper's recipe (see PretrainConfig and detector.data.transforms), the weights are Polyak
averaged (EMA) for evaluation and export, and the result is written in torchvision's state-dict
layout so that ``model.init=PATH`` and ``torchvision.models.googlenet`` both load it.

Decoding and augmentation run in DataLoader worker processes; each sample's augmentation is
seeded by (seed, epoch, index) and each epoch's order by (seed, epoch), so an interrupted run
resumed from its checkpoint (saved every ``checkpoint_every`` steps, each epoch and on Ctrl-C)
ends with the same weights as an uninterrupted one, whatever the number of workers.
Under ``torchrun`` each rank takes its share of every global batch (DDP).

Run folder ``<output_dir>/pretrain/``: checkpoints/last.pt, pretrain_log.csv (per epoch: train
loss and top-1, val loss / top-1 / top-5 of the raw and the EMA weights), pretrain_curve.png,
config.yaml, and the export googlenet.pth + googlenet.json (classes, input size, normalisation).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.common.atomic import atomic_path, check_writable, write_text
from detector.common.csv_log import CsvLog
from detector.common.distributed import DistContext, barrier, device_for, process_group
from detector.common.errors import UserError
from detector.common.precision import Precision, flush_denormals, prepare_model, resolve_precision
from detector.config import Config, PretrainConfig, save_config
from detector.data.classification import ClassificationSamples, EpochBatches, make_loader, one_line
from detector.data.imagefolder import ImageFolder, read_image_folder
from detector.data.transforms import CenterCrop, TrainAugment
from detector.modeling.build import build_classifier
from detector.modeling.checkpoint import error_line, load_checkpoint, load_weights, require_keys, save_checkpoint
from detector.modeling.googlenet import PIXEL_MEAN, PIXEL_STD
from detector.modeling.regions import normalise
from detector.training.curves import PRETRAIN_CURVES, plot_log_curves
from detector.training.schedules import pretrain_lr_factor

log = logging.getLogger(__name__)

#: what a resumable pre-training checkpoint holds
RESUME_KEYS = ("model", "ema", "optimizer", "epoch", "step_in_epoch", "rng", "classes", "config")
EXPORT_NAME = "googlenet.pth"  #: the exported weights in <run>/pretrain/ (metadata: googlenet.json)
LOG_FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
              "ema_val_loss", "ema_top1", "ema_top5", "images_per_s", "seconds")
SCHEDULES = ("step", "cosine", "onecycle")


# --------------------------------------------------------------------------- data


def train_augment(settings: PretrainConfig) -> TrainAugment:
    """The training transform the `pretrain:` settings describe."""
    return TrainAugment(settings.input_size, settings.min_area, settings.max_area, settings.min_aspect,
                        settings.max_aspect, settings.random_interpolation, settings.flip,
                        settings.brightness, settings.contrast, settings.saturation)


# --------------------------------------------------------------------------- model and schedule


class ModelEma:
    """Polyak averaging of parameters and buffers: ema <- d * ema + (1 - d) * weights with
    d = min(decay, (1 + t) / (10 + t)) at update t, so early averages are not stuck at the init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state, state = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema_state[k] for k in floats], [state[k].detach() for k in floats], 1 - decay)
        for key in ema_state.keys() - set(floats):
            ema_state[key].copy_(state[key])

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def classification_loss(outputs, labels: torch.Tensor, config: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, main-head loss): label-smoothed cross-entropy of the main head plus
    aux_loss_weight x each auxiliary head's."""
    main = F.cross_entropy(outputs.logits.float(), labels, label_smoothing=config.label_smoothing)
    aux = sum(F.cross_entropy(a.float(), labels, label_smoothing=config.label_smoothing)
              for a in (outputs.aux_logits1, outputs.aux_logits2))
    return main + config.aux_loss_weight * aux, main


@torch.no_grad()
def evaluate_top_k(models: list[nn.Module], loader: DataLoader, precision: Precision) -> list[dict[str, float]]:
    """Cross-entropy loss and top-1 / top-5 accuracy (fractions) of each of `models` over
    `loader`, in one pass over its images."""
    for model in models:
        model.eval()
    sums = [{"loss": 0.0, "top1": 0.0, "top5": 0.0} for _ in models]
    total = 0
    for images, labels in loader:
        inputs = normalise(images, precision)
        labels = labels.to(precision.device)
        for model, sum_ in zip(models, sums):
            with precision.autocast():
                logits = model(inputs).float()
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sum_["loss"] += float(F.cross_entropy(logits, labels, reduction="sum"))
            sum_["top1"] += float((ranked[:, 0] == labels).sum())
            sum_["top5"] += float((ranked == labels[:, None]).any(1).sum())
        total += len(labels)
    return [{key: value / max(1, total) for key, value in sum_.items()} for sum_ in sums]


# --------------------------------------------------------------------------- the run


class Pretrainer:
    """Owns the classifier, optimiser, EMA and run folder of one pre-training run."""

    def __init__(self, config: Config, context: DistContext, resume: bool = False, folder: Path | None = None) -> None:
        self.config, self.context = config, context
        self.settings = settings = config.pretrain
        if settings.schedule not in SCHEDULES:
            raise UserError(f"pretrain.schedule {settings.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not settings.root:
            raise UserError("pretrain.root: set it to an ImageFolder (<root>/train/<class>/*, <root>/val/<class>/*)")
        self.run_dir = folder or pretrain_folder(config)
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.train_folder = read_image_folder(settings.root, settings.train_split)
        self.val_folder = read_image_folder(settings.root, settings.val_split, self.train_folder.classes)
        self.steps_per_epoch = len(self.train_folder) // (settings.batch_size * context.world_size)
        if self.steps_per_epoch == 0:
            raise UserError(f"{self.train_folder.root}: {len(self.train_folder)} images make no batch of "
                            f"{settings.batch_size} x {context.world_size} processes; lower pretrain.batch_size")
        self._check_run_dir(resume)
        self.precision = resolve_precision(settings.precision, device_for(context))
        flush_denormals()
        self.model = prepare_model(build_classifier(len(self.train_folder.classes), settings.dropout), self.precision)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         nesterov=settings.nesterov, weight_decay=settings.weight_decay)
        self.ema = ModelEma(self.model, settings.ema_decay)
        self.epoch = self.step_in_epoch = 0
        if resume:
            self._restore(load_checkpoint(self.last_path))
        self.network = DistributedDataParallel(self.model) if context.enabled else self.model
        self.scaler = torch.amp.GradScaler(enabled=self.precision.dtype == torch.float16)
        self.train_samples = ClassificationSamples(self.train_folder, train_augment(settings), config.seed)
        self.val_samples = ClassificationSamples(self.val_folder, CenterCrop(settings.input_size), config.seed)

    # ----------------------------------------------------------------- state

    def _check_run_dir(self, resume: bool) -> None:
        if resume and not self.last_path.is_file():
            raise UserError(f"{self.last_path}: nothing to resume (no pre-training checkpoint in {self.run_dir})")
        if not resume and self.last_path.is_file():
            raise UserError(f"{self.run_dir} already holds a pre-training checkpoint; pass --resume to continue "
                            "it or choose another output_dir (--set output_dir=...)")
        check_writable(self.last_path.parent, "pre-training folder")

    def state(self) -> dict:
        return {
            "kind": "pretrain",
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "rng": torch.get_rng_state(),
            "classes": self.train_folder.classes,
            "display_names": self.train_folder.display_names,
            "config": dataclasses.asdict(self.config),
        }

    def _restore(self, state: dict) -> None:
        where = str(self.last_path)
        if state.get("kind") != "pretrain":
            raise UserError(f"{where}: not a pre-training checkpoint")
        require_keys(state, RESUME_KEYS, where)
        if state["classes"] != self.train_folder.classes:
            raise UserError(f"{where}: trained on classes {state['classes'][:5]}..., the ImageFolder has "
                            f"{self.train_folder.classes[:5]}...; resume on the same data or start a new output_dir")
        saved = state["config"].get("pretrain", {}) if isinstance(state["config"], dict) else {}
        for key in ("input_size", "batch_size", "epochs", "schedule", "dropout"):
            if saved.get(key) != getattr(self.settings, key):
                raise UserError(f"{where}: was trained with pretrain.{key}={saved.get(key)!r}, the config says "
                                f"{getattr(self.settings, key)!r}; resume with the same settings")
        load_weights(self.model, state["model"], where, "the GoogLeNet classifier this config describes")
        try:
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"{where}: cannot resume from its training state ({error_line(exc)})") from None
        log.info("resumed %s at epoch %d, step %d", self.last_path, self.epoch, self.step_in_epoch)

    def save(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.last_path, self.state())

    # ----------------------------------------------------------------- steps

    def set_lr(self) -> float:
        epoch = self.epoch + self.step_in_epoch / self.steps_per_epoch
        lr = self.settings.lr * pretrain_lr_factor(self.settings, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One SGD step; returns (main-head loss, top-1 accuracy on the augmented batch)."""
        self.network.train()
        self.set_lr()
        labels = labels.to(self.precision.device)
        with self.precision.autocast():
            outputs = self.network(normalise(images, self.precision))
        loss, main = classification_loss(outputs, labels, self.settings)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.step_in_epoch += 1
        return float(main.detach()), float((outputs.logits.argmax(1) == labels).float().mean())

    def train_epoch(self) -> dict[str, float]:
        """The rest of the current epoch; mean loss / top-1 over its steps and images/s."""
        settings = self.settings
        batches = EpochBatches(len(self.train_samples), settings.batch_size, self.epoch, self.config.seed,
                               self.context, self.step_in_epoch)
        loader = make_loader(self.train_samples, batches, settings.workers, self.config.seed + self.epoch)
        progress = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{settings.epochs}",
                        disable=not self.context.is_main, dynamic_ncols=True)
        losses, hits, start, images_done = [], [], time.perf_counter(), 0
        try:
            for images, labels in loader:
                loss, top1 = self.step(images, labels)
                losses.append(loss)
                hits.append(top1)
                images_done += len(labels) * self.context.world_size
                rate = images_done / (time.perf_counter() - start)
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}")
                if self.step_in_epoch % settings.checkpoint_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                    self.save()
        except UserError as exc:
            raise one_line(exc) from None
        finally:
            progress.close()
        seconds = time.perf_counter() - start
        return {"train_loss": float(np.mean(losses)) if losses else math.nan,
                "train_top1": float(np.mean(hits)) if hits else math.nan,
                "images_per_s": images_done / max(seconds, 1e-9), "seconds": seconds}

    def validate(self) -> dict[str, float]:
        """Center-crop loss / top-1 / top-5 on the val split, raw weights and EMA weights."""
        batches = EpochBatches(len(self.val_samples), 128, 0, 0, DistContext(), shuffle=False, drop_last=False)
        loader = make_loader(self.val_samples, batches, self.settings.workers, 0)
        try:
            raw, ema = evaluate_top_k([self.model, self.ema.module], loader, self.precision)
        except UserError as exc:
            raise one_line(exc) from None
        return {"val_loss": raw["loss"], "val_top1": raw["top1"], "val_top5": raw["top5"],
                "ema_val_loss": ema["loss"], "ema_top1": ema["top1"], "ema_top5": ema["top5"]}

    def run(self) -> Path:
        """Train to the last epoch, validating and checkpointing after each; then export."""
        settings = self.settings
        if self.context.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            log.info("pre-training %s on %s: %d images, %d classes, %d steps/epoch, %s", self.run_dir,
                     self.train_folder.root, len(self.train_folder), len(self.train_folder.classes),
                     self.steps_per_epoch, self.precision.description)
        csv_log = CsvLog(self.run_dir / "pretrain_log.csv", LOG_FIELDS, self.epoch) if self.context.is_main else None
        try:
            while self.epoch < settings.epochs:
                values = self.train_epoch()
                values.update(epoch=self.epoch + 1, step=(self.epoch + 1) * self.steps_per_epoch, lr=self.set_lr())
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if self.context.is_main:
                    values.update(self.validate())
                    csv_log.write(values)
                    log.info("epoch %d: train loss %.3f, val top-1 %.2f%% (EMA %.2f%%), top-5 %.2f%%, %.0f images/s",
                             self.epoch, values["train_loss"], 100 * values["val_top1"], 100 * values["ema_top1"],
                             100 * values["ema_top5"], values["images_per_s"])
                self.save()
        except KeyboardInterrupt:
            self.save()
            log.warning("interrupted: checkpoint saved at epoch %d step %d; rerun with --resume",
                        self.epoch, self.step_in_epoch)
            raise
        barrier(self.context)
        if not self.context.is_main:
            return self.run_dir / EXPORT_NAME
        plot_log_curves(self.run_dir / "pretrain_log.csv", self.run_dir / "pretrain_curve.png", PRETRAIN_CURVES)
        return export_weights(self.ema.module, self.train_folder, settings, self.run_dir / EXPORT_NAME,
                              csv_log.last if csv_log else {})


# --------------------------------------------------------------------------- export


def export_weights(model: nn.Module, folder: ImageFolder, settings: PretrainConfig, path: Path,
                   metrics: dict[str, float]) -> Path:
    """Write `model`'s weights as a torchvision GoogLeNet state dict (fp32, contiguous) to `path`
    and its metadata to the same name with .json: classes, display names, input size,
    normalisation (mean / std of [0, 1] pixels, transform_input false), final val metrics."""
    weights = {k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().clone()
               for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(weights, tmp)
    metadata = {
        "architecture": "torchvision.models.googlenet", "aux_logits": True, "transform_input": False,
        "num_classes": len(folder.classes), "classes": folder.classes, "display_names": folder.display_names,
        "input_size": settings.input_size, "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
        "weights": "EMA (Polyak) average", "metrics": {k: metrics[k] for k in ("epoch", "ema_top1", "ema_top5") if k in metrics},
    }
    write_text(path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- logs


def pretrain_folder(config: Config) -> Path:
    """Where ``rcnn pretrain`` writes: <output_dir>/pretrain."""
    return config.run_dir / "pretrain"


def pretrain(config: Config, resume: bool = False, folder: Path | None = None) -> Path:
    """Pre-train per `config.pretrain` in `folder` (default pretrain_folder), resuming from its
    last checkpoint if asked; returns the exported weights' path."""
    with process_group() as context:
        torch.manual_seed(config.seed)
        return Pretrainer(config, context, resume, folder).run()


def resolve_init(config: Config) -> str:
    """model.init with ``pretrain`` replaced by this run's export (<output_dir>/pretrain/googlenet.pth)."""
    if config.model.init != "pretrain":
        return config.model.init
    exported = pretrain_folder(config) / EXPORT_NAME
    if not exported.is_file():
        raise UserError(f"model.init pretrain: {exported} does not exist; run `rcnn pretrain` with this config "
                        "first, or give the weights' path")
    return str(exported)
