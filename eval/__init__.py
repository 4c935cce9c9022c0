"""Ground truth and scoring: dataset readers, image loading, box ops, mAP evaluators, reports.

The base layer of the project: it imports neither ``proposals`` nor ``detector``.
"""
