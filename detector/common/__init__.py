"""Lowest layer: errors, atomic writes, worker processes, distributed set-up, precision."""
