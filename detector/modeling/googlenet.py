"""The GoogLeNet (Inception v1) region classifier of the ILSVRC 2014 detection entry.

Topology: torchvision's ``googlenet`` (Szegedy et al. 2014, Table 1, with batch norm): nine
Inception modules, auxiliary classifiers on 4a and 4d (1x1 conv 128, FC 1024, dropout 0.7;
used in training with loss weight 0.3, dropped at inference) and a main head of global average
pooling + dropout 0.4. The 1000-way layer becomes C+1 class logits (0 = background) and a
class-specific box-regression layer (4*C deltas) is added, as in R-CNN / Fast R-CNN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import GoogLeNet, googlenet
from torchvision.models.googlenet import BasicConv2d

from detector.common.errors import UserError
from detector.modeling.roi_pool import roi_align_matmul

#: Input normalisation of torchvision's ImageNet GoogLeNet weights: they were trained with
#: ``transform_input=True``, i.e. pixels in [0, 1] mapped to (x - 0.5) / 0.5.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)
FEATURE_DIM = 1024  #: width of the pooled inception_5b feature
AUX_POOL = 4  #: the auxiliary classifiers' average-pooled input size (torchvision InceptionAux)


@dataclass
class RegionOutputs:
    """Network outputs for B regions: logits [B, C+1], box deltas [B, 4C], features [B, 1024],
    auxiliary logits [B, C+1] each (training only, else None)."""

    class_logits: torch.Tensor
    box_deltas: torch.Tensor
    features: torch.Tensor
    aux_logits: tuple[torch.Tensor, ...] = ()


class RegionClassifier(nn.Module):
    """GoogLeNet trunk + C+1 class head + class-specific box head.

    ``forward(regions [B, 3, S, S] normalised) -> RegionOutputs``.
    """

    def __init__(self, num_classes: int, aux_classifiers: bool = True, dropout: float = 0.4) -> None:
        super().__init__()
        self.num_classes = num_classes
        trunk: GoogLeNet = googlenet(
            weights=None, aux_logits=aux_classifiers, transform_input=False, init_weights=True,
            num_classes=1000, dropout=dropout, dropout_aux=0.7,
        )
        trunk.fc = nn.Identity()
        if aux_classifiers:
            trunk.aux1.fc2 = nn.Linear(1024, num_classes + 1)
            trunk.aux2.fc2 = nn.Linear(1024, num_classes + 1)
        self.trunk = trunk
        self.cls_score = nn.Linear(FEATURE_DIM, num_classes + 1)
        self.bbox_pred = nn.Linear(FEATURE_DIM, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    @property
    def has_aux(self) -> bool:
        return self.trunk.aux1 is not None

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Pooled inception_5b features [B, 1024] (after dropout in training) and aux logits."""
        t = self.trunk
        x = t.maxpool2(t.conv3(t.conv2(t.maxpool1(t.conv1(x)))))
        x = t.maxpool3(t.inception3b(t.inception3a(x)))
        x = t.inception4a(x)
        aux = []
        if self.training and self.has_aux:
            aux.append(t.aux1(x))
        x = t.inception4d(t.inception4c(t.inception4b(x)))
        if self.training and self.has_aux:
            aux.append(t.aux2(x))
        x = t.maxpool4(t.inception4e(x))
        x = t.inception5b(t.inception5a(x))
        x = t.dropout(torch.flatten(t.avgpool(x), 1))
        return x, tuple(aux)

    def forward(self, regions: torch.Tensor) -> RegionOutputs:
        features, aux = self.features(regions)
        return RegionOutputs(self.cls_score(features), self.bbox_pred(features), features, aux)


class SharedFeatureClassifier(RegionClassifier):
    """The same network run Fast R-CNN style (``model.mode: roi``): the trunk runs once per image
    and each region is pooled from a shared feature map with RoIAlign.

    ``roi_layer="4e"``: pool inception_4e (stride 16) to 14x14 (what a 224-pixel crop gives
    there), then max pool, inception 5a/5b and the heads run per region. ``roi_layer="5b"``: the
    whole trunk runs per image and regions are pooled (4x4, averaged) from inception_5b
    (stride 32), SPPnet-style, so a region costs almost nothing. (``"5b-dilated"`` is
    LightHeadClassifier; make_network picks the class.) In training the auxiliary classifiers
    see RoIAlign-pooled 4a / 4d features. Parameters and state-dict keys are those of
    RegionClassifier, so weights load either way.

    ``forward(images: list of [3, H, W], rois [R, 5] = (image index, x1, y1, x2, y2) in pixels
    of those images) -> RegionOutputs``.
    """

    #: roi_layer -> (stride, RoIAlign output size) of the map regions are pooled from
    LAYERS = {"4e": (16, 14), "5b": (32, 4)}

    def __init__(self, num_classes: int, aux_classifiers: bool = True, dropout: float = 0.4, roi_layer: str = "4e") -> None:
        super().__init__(num_classes, aux_classifiers, dropout)
        if roi_layer not in self.LAYERS:
            raise UserError(f"model.roi_layer {roi_layer!r}: {type(self).__name__} runs {', '.join(self.LAYERS)}")
        self.roi_layer = roi_layer

    @staticmethod
    def _pool(maps: torch.Tensor, rois: torch.Tensor, stride: int, size: int) -> torch.Tensor:
        """RoIAlign [R, C, size, size] (2x2 samples a bin) from a batch of feature maps [N, C, h, w]."""
        return roi_align_matmul(maps, rois, size, 1.0 / stride, sampling_ratio=2)

    def image_features(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """inception 4a and 4d maps [N, C, H/16, W/16] and the roi layer's map (see shared_map)
        of normalised images [3, H_i, W_i], run as one batch: each is padded
        at its bottom and right with zeros (the normalised mean) to the largest H and W, so batch
        norm sees the whole batch in training."""
        _, x4a, x4d, x4e = self.trunk_maps(images)
        return x4a, x4d, self.shared_map(x4e)

    def trunk_maps(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """inception 3b [N, 480, H/8, W/8], 4a, 4d and 4e [N, C, H/16, W/16] of normalised images
        [3, H_i, W_i] batched by :func:`pad_to_batch`."""
        t = self.trunk
        x = pad_to_batch(images).contiguous(memory_format=torch.channels_last)
        x = t.maxpool2(t.conv3(t.conv2(t.maxpool1(t.conv1(x)))))
        x3b = t.inception3b(t.inception3a(x))
        x4a = t.inception4a(t.maxpool3(x3b))
        x4d = t.inception4d(t.inception4c(t.inception4b(x4a)))
        return x3b, x4a, x4d, t.inception4e(x4d)

    def shared_map(self, x4e: torch.Tensor) -> torch.Tensor:
        """The map regions are pooled from, given inception_4e's [N, 832, H/16, W/16]."""
        t = self.trunk
        return t.inception5b(t.inception5a(t.maxpool4(x4e))) if self.roi_layer == "5b" else x4e

    def region_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Features [R, 1024] from pooled regions ([R, 832, 14, 14] of 4e, or [R, 1024, 4, 4] of 5b)."""
        t = self.trunk
        if self.roi_layer == "4e":
            pooled = t.inception5b(t.inception5a(t.maxpool4(pooled)))
        return t.dropout(torch.flatten(t.avgpool(pooled), 1))

    def pool_regions(self, shared_maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIs [R, 5] pooled [R, C, s, s] from the roi layer's maps [N, C, h, w]."""
        return self._pool(shared_maps, rois, *self.LAYERS[self.roi_layer])

    def pooled_outputs(self, shared_maps: torch.Tensor, rois: torch.Tensor) -> RegionOutputs:
        """Class logits, deltas and features of RoIs [R, 5] on precomputed roi-layer maps
        (those of image_features; no aux)."""
        features = self.region_head(self.pool_regions(shared_maps, rois))
        return RegionOutputs(self.cls_score(features), self.bbox_pred(features), features)

    def forward(self, images: list[torch.Tensor], rois: torch.Tensor) -> RegionOutputs:
        x4a, x4d, shared = self.image_features(images)
        outputs = self.pooled_outputs(shared, rois)
        if self.training and self.has_aux:
            # The aux heads average-pool their input to 4x4 first; pooling the RoIs straight to
            # 4x4 spares RoIAlign's slow CPU backward on 14x14 outputs (12x fewer samples).
            outputs.aux_logits = (self.trunk.aux1(self._pool(x4a, rois, 16, AUX_POOL)),
                                  self.trunk.aux2(self._pool(x4d, rois, 16, AUX_POOL)))
        return outputs


class LightHeadClassifier(SharedFeatureClassifier):
    """``roi_layer="5b-dilated"``: the whole trunk runs per image and a region costs one small
    fully connected layer, yet its features keep their spatial layout (Light-Head R-CNN, Li et
    al. 2017, on a dilated last stage as in DeepLab / detectron2's DC5).

    inception 5a/5b run on inception_4e's stride-16 grid: maxpool4 (2x2, stride 2) becomes a
    2x2 stride-1 pool and 5a/5b's 3x3 convolutions and pools are dilated by 2, so every even
    cell of the stride-16 5b map equals the stride-32 map's value (ImageNet weights keep their
    meaning; tested). A 1x1 convolution thins the map to LIGHT_CHANNELS; each region is pooled
    to 7x7 from it and one FC layer (+ ReLU, dropout) gives its 1024-d feature. On a 600x800
    image 5a/5b cost ~5 GMAC once, and a region ~6 MMAC instead of 4e's ~130.
    The added layers (``light_reduce``, ``light_fc``) start from random weights.
    """

    LAYERS = {"5b-dilated": (16, 7)}
    LIGHT_CHANNELS = 128  #: width of the thin map regions are pooled from

    def __init__(self, num_classes: int, aux_classifiers: bool = True, dropout: float = 0.4,
                 roi_layer: str = "5b-dilated") -> None:
        super().__init__(num_classes, aux_classifiers, dropout, roi_layer)
        dilate_inception5(self.trunk)
        pool_size = self.LAYERS[self.roi_layer][1]
        self.light_reduce = BasicConv2d(FEATURE_DIM, self.LIGHT_CHANNELS, kernel_size=1)
        self.light_fc = nn.Linear(self.LIGHT_CHANNELS * pool_size * pool_size, FEATURE_DIM)

    def shared_map(self, x4e: torch.Tensor) -> torch.Tensor:
        """The thin map [N, LIGHT_CHANNELS, H/16, W/16] from inception_4e's [N, 832, H/16, W/16]."""
        t = self.trunk
        pooled = F.max_pool2d(F.pad(x4e, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        return self.light_reduce(t.inception5b(t.inception5a(pooled)))

    def region_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Features [R, 1024] from regions pooled from the thin map [R, LIGHT_CHANNELS, 7, 7]."""
        return self.trunk.dropout(F.relu(self.light_fc(torch.flatten(pooled, 1))))


class PyramidLightHeadClassifier(LightHeadClassifier):
    """``roi_layer="5b-dilated+3b"``: the light head with a second, stride-8 level for small
    regions (FPN, Lin et al. 2017): the thin stride-16 map upsampled x2 (nearest) plus a 1x1
    lateral projection of inception_3b (480 channels, stride 8), smoothed by a 3x3 convolution.
    FPN's level rule (its eq. 1 with k0 = 4 at 224 pixels, levels 3-4): a region whose side
    sqrt(w h) is under 112 input pixels is pooled from the stride-8 map, others from the
    stride-16 one; both to 7x7 and through the one shared ``light_fc``. The roi-layer "maps" are
    the pair (stride-8 [N, 128, H/8, W/8], stride-16 [N, 128, H/16, W/16]). Adds
    ``fine_lateral`` and ``fine_smooth`` (random init) to the light head's layers.
    """

    LAYERS = {"5b-dilated+3b": (16, 7)}
    FINE_STRIDE = 8
    SMALL_SIDE = 112  #: regions with sqrt(w h) below this many input pixels use the stride-8 map
    INCEPTION_3B_CHANNELS = 480

    def __init__(self, num_classes: int, aux_classifiers: bool = True, dropout: float = 0.4,
                 roi_layer: str = "5b-dilated+3b") -> None:
        super().__init__(num_classes, aux_classifiers, dropout, roi_layer)
        self.fine_lateral = BasicConv2d(self.INCEPTION_3B_CHANNELS, self.LIGHT_CHANNELS, kernel_size=1)
        self.fine_smooth = BasicConv2d(self.LIGHT_CHANNELS, self.LIGHT_CHANNELS, kernel_size=3, padding=1)

    def image_features(self, images: list[torch.Tensor]) -> tuple:
        """inception 4a and 4d maps and the (stride-8, stride-16) pair regions are pooled from."""
        x3b, x4a, x4d, x4e = self.trunk_maps(images)
        coarse = self.shared_map(x4e)
        return x4a, x4d, (self.fine_map(x3b, coarse), coarse)

    def fine_map(self, x3b: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """The stride-8 map [N, 128, H/8, W/8] from inception_3b's and the thin stride-16 map."""
        upsampled = F.interpolate(coarse, size=x3b.shape[-2:], mode="nearest")
        return self.fine_smooth(self.fine_lateral(x3b) + upsampled)

    def is_small(self, rois: torch.Tensor) -> torch.Tensor:
        """Which RoIs [R, 5] (pixels) are pooled from the stride-8 map: [R] bool."""
        sides = ((rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0)).sqrt()
        return sides < self.SMALL_SIDE

    def pool_regions(self, shared_maps: tuple[torch.Tensor, torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """RoIs [R, 5] pooled [R, 128, 7, 7], each from its level of the (stride-8, stride-16) maps."""
        fine, coarse = shared_maps
        stride, size = self.LAYERS[self.roi_layer]
        small = self.is_small(rois)
        pooled = coarse.new_zeros((len(rois), coarse.shape[1], size, size))
        if bool(small.any()):
            pooled[small] = self._pool(fine, rois[small], self.FINE_STRIDE, size)
        if not bool(small.all()):
            pooled[~small] = self._pool(coarse, rois[~small], stride, size)
        return pooled


def dilate_inception5(trunk: GoogLeNet) -> None:
    """Dilate inception 5a/5b's spatial convolutions and pools by 2, in place (their padding
    doubles), for running them on a grid twice as fine as the one they were trained on."""
    for block in (trunk.inception5a, trunk.inception5b):
        for module in block.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                module.dilation = tuple(2 * d for d in module.dilation)
                module.padding = tuple(2 * p for p in module.padding)
        pool: nn.MaxPool2d = block.branch4[0]  # 3x3, stride 1, padding 1; max_pool2d caps padding
        block.branch4[0] = nn.Sequential(nn.ConstantPad2d(2 * pool.padding, float("-inf")),
                                         nn.MaxPool2d(pool.kernel_size, stride=1, dilation=2))


#: model.roi_layer -> the shared-feature network that runs it
ROI_NETWORKS = {layer: network for network in (SharedFeatureClassifier, LightHeadClassifier, PyramidLightHeadClassifier)
                for layer in network.LAYERS}


def pad_to_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """Images [3, H_i, W_i] -> [N, 3, max H, max W], zero-padded at the bottom and right."""
    if len(images) == 1:
        return images[0][None]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    return batch


def make_network(mode: str, num_classes: int, aux_classifiers: bool = True, dropout: float = 0.4,
                 roi_layer: str = "4e") -> RegionClassifier:
    """The region classifier for `mode`: crop (warped regions) or roi (shared image features)."""
    if mode == "crop":
        return RegionClassifier(num_classes, aux_classifiers, dropout)
    if mode == "roi":
        if roi_layer not in ROI_NETWORKS:
            raise UserError(f"model.roi_layer {roi_layer!r}: expected one of {', '.join(ROI_NETWORKS)}")
        return ROI_NETWORKS[roi_layer](num_classes, aux_classifiers, dropout, roi_layer)
    raise UserError(f"model.mode {mode!r}: expected crop or roi")
