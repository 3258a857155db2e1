"""Where the AwaRes task YAMLs are installed: the ``tasks_config`` package, found without importing it
(its ``utils.py`` imports lmms-eval). The plugin registers this folder with lmms-eval; the dataset
exporter reads the tasks' dataset names from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def tasks_dir() -> Path:
    """Directory of the AwaRes task YAMLs (the ``tasks_config`` package), without importing it."""
    spec = importlib.util.find_spec("tasks_config")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package 'tasks_config' is not installed (pip install awares-lmms)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
