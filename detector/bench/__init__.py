"""Benchmark layer: the speed and memory measurements behind ``rcnn bench``."""
