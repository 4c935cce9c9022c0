"""Experiment configs (YAML) and class lists shipped with the package.

``config_path("voc2007")`` finds ``configs/voc2007.yaml`` whether the project is installed
editable or as a wheel.
"""
from importlib import resources
from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a shipped config given its name (``voc2007``) or file name (``voc2007.yaml``)."""
    file_name = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    return Path(str(resources.files(__name__).joinpath(file_name)))


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped with the package."""
    return sorted(p.name.rsplit(".", 1)[0] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
