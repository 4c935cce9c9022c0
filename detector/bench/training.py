"""``rcnn bench``'s ``training`` and ``pretrain`` sections: regions/s of a fine-tuning SGD step, and
images/s of classification pre-training, its network step and its data loader alone.

- ``training``: regions/s of an SGD step (aux heads on); baseline fp32, beside bf16 autocast
  (CPU) / fp16 AMP (CUDA).
- ``pretrain``: images/s of classification pre-training (pretrain.input_size, batch_size): the
  network's SGD step at the training precision (baseline), fp32, and the data loader alone
  (decode + augmentation, pretrain.workers processes and none) on pretrain.root's training split
  (a generated 224x224 ImageFolder when it has none). Target: loader >= 1.5x the network.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from detector.bench.models import NUM_CLASSES, fast_precision
from detector.bench.report import BenchSettings, Row, median_seconds
from detector.common.precision import Precision, prepare_input, prepare_model, resolve_precision
from detector.config import Config, TrainConfig
from detector.modeling.googlenet import RegionClassifier
from detector.training.finetune import region_losses
from detector.training.minibatches import RegionBatch

LOADER_TARGET = 1.5  #: issue 13: the pre-training loader delivers >= 1.5x the network's images/s


def training_batch(crops: torch.Tensor) -> RegionBatch:
    """A minibatch of the given regions: a quarter foreground (random classes), the rest background."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(len(crops), dtype=torch.long)
    num_fg = max(1, len(crops) // 4)
    labels[:num_fg] = torch.randint(1, NUM_CLASSES + 1, (num_fg,), generator=generator)
    return RegionBatch((crops,), labels, 0.1 * torch.randn(len(crops), 4, generator=generator), labels > 0)


def train_step_fn(model: RegionClassifier, batch: RegionBatch, precision: Precision,
                  train: TrainConfig) -> Callable[[], None]:
    """One SGD step on `batch` of a copy of `model` (with its auxiliary heads), as ``Trainer.step``
    runs it; the copy and its optimiser state persist across calls."""
    model = prepare_model(copy.deepcopy(model), precision).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay)
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.dtype == torch.float16)
    inputs = prepare_input(batch.inputs, precision)

    def step() -> None:
        with precision.autocast():
            outputs = model(*inputs)
        loss = region_losses(outputs, batch, train.aux_loss_weight, train.bbox_loss_weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def bench_training(model: RegionClassifier, crops: torch.Tensor, train: TrainConfig,
                   settings: BenchSettings) -> list[Row]:
    """Training regions per second of `model` at minibatch ``len(crops)``: fp32 (baseline) and
    bf16 autocast (CPU) / fp16 AMP (CUDA)."""
    device = torch.device(settings.device)
    batch = training_batch(crops)
    rows = []
    for precision in (Precision(device, None), fast_precision(device)):
        step = train_step_fn(model, batch, precision, train)
        seconds = median_seconds(step, settings.repeats, settings.warmup, device)
        rows.append(Row("training", f"{precision.description}, minibatch {len(crops)}", len(crops) / seconds,
                        "regions/s", baseline=precision.dtype is None))
    return rows


def bench_pretrain(config: Config, settings: BenchSettings) -> list[Row]:
    """Pre-training images/s: the network's step (classifier, aux losses, SGD, EMA) at the
    configured precision (baseline) and fp32, and the DataLoader alone with pretrain.workers
    worker processes and with none."""
    import tempfile

    from detector.common.distributed import DistContext
    from detector.data.imagefolder import read_image_folder
    from detector.training.pretrain import (
        ClassificationSamples,
        EpochBatches,
        ModelEma,
        build_classifier,
        classification_loss,
        make_loader,
        normalise,
        train_augment,
    )

    pretrain, device = config.pretrain, torch.device(settings.device)
    size, batch = pretrain.input_size, settings.pretrain_batch
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch) % 10
    configured = resolve_precision(pretrain.precision, device)
    rows = []
    for precision in [configured] + ([Precision(device, None)] if configured.dtype is not None else []):
        model = prepare_model(build_classifier(10), precision).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ema = ModelEma(model, pretrain.ema_decay)

        def step() -> None:
            with precision.autocast():
                outputs = model(normalise(images, precision))
            loss = classification_loss(outputs, labels.to(device), pretrain)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(model)

        seconds = median_seconds(step, settings.repeats, settings.warmup, device)
        rows.append(Row("pretrain", f"network step, {precision.description}, {batch} x {size} px", batch / seconds,
                        "images/s", baseline=not rows))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(pretrain.root) if pretrain.root and (Path(pretrain.root) / pretrain.train_split).is_dir() else None
        folder = read_image_folder(root or _generated_image_folder(Path(scratch)), pretrain.train_split if root else "train")
        samples = ClassificationSamples(folder, train_augment(pretrain), config.seed)
        steps = max(2, min(len(folder) // batch, 8 * settings.repeats))
        for workers in dict.fromkeys((pretrain.workers, 0)):
            loader = make_loader(samples, EpochBatches(len(folder), batch, 0, 0, DistContext()), workers, 0)
            start, count = time.perf_counter(), 0  # worker start-up included: a conservative rate
            for _, (batch_images, _) in zip(range(steps), loader):
                count += len(batch_images)
            note = f"{folder.root}; target >= {LOADER_TARGET}x the network" if workers == pretrain.workers else str(folder.root)
            rows.append(Row("pretrain", f"data loader alone, {workers} worker processes", count / (time.perf_counter() - start),
                            "images/s", note=note))
    return rows


def _generated_image_folder(root: Path, count: int = 160) -> Path:
    """A 224x224 JPEG ImageFolder of noise (Imagenette's size) for timing the loader."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root
