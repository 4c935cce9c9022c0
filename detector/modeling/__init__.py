"""Model layer: GoogLeNet region classifiers, RoI pooling, region warping, box regression, SVMs, checkpoints, class maps."""
