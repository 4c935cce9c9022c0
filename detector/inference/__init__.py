"""Inference layer: the Detector, post-processing (NMS, box voting), ensembles, int8, classification, split detection."""
