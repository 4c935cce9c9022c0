"""Region proposals: selective search backends, proposal cache and recall reports.

``propose`` runs one backend on an image; ``propose_with_config`` adds the preset and the shared
post-processing; ``proposals.cache.cached_proposals`` reads or fills the per-image cache.
This package never imports ``detector``.
"""
from proposals.search import propose, propose_with_config

__all__ = ["propose", "propose_with_config"]
