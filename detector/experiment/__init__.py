"""Experiment layer: the cached, resumable ``rcnn run`` pipeline and its run folders."""
