"""Training layer: region sampling, minibatches, R-CNN fine-tuning, classification pre-training, schedules."""
