"""Region proposals: selective search backends, proposal cache and recall reports.

``propose`` runs one backend on an image; ``propose_with_config`` adds the preset and the shared
post-processing; ``proposals.cache.cached_proposals`` reads or fills the per-image cache.
This package never imports ``detector``.
"""

__all__ = ["propose", "propose_with_config"]


def __getattr__(name: str):
    # Imported lazily so that `import proposals.config` (every config load) does not pay for
    # OpenCV and torch.
    if name in __all__:
        from proposals import search

        return getattr(search, name)
    raise AttributeError(f"module 'proposals' has no attribute {name!r}")
