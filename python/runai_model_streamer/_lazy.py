"""Module attributes imported on first use (PEP 562).

The streaming classes import torch; downloads, listings and the CLI's
download commands do not need it, so the modules that name those classes
publicly resolve them only when asked."""

from __future__ import annotations

import importlib
from typing import Callable, Dict


def lazy_getattr(module_globals: dict, names: Dict[str, str]) -> Callable[[str], object]:
    """A module __getattr__ that imports names[name] (a module path) and
    returns its attribute `name`, cached in module_globals."""

    def __getattr__(name: str):
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        module_globals[name] = value
        return value

    return __getattr__
