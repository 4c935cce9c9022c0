"""Peer detectors trained under our constraints and scored by our evaluator (issue 24)."""
