"""GoogLeNet R-CNN detector: region classifier, training, inference and the command line.

``from detector import Detector`` is the inference entry point (see detector.inference.detector).
"""

__all__ = ["Detector"]


def __getattr__(name: str):
    # Imported lazily so that `import detector.config` and the CLI do not pay for the model code.
    if name == "Detector":
        from detector.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
