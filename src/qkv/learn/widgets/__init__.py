"""The course's widgets, one module each; importing this package registers them all in `WIDGETS`."""

import importlib
import pkgutil

from qkv.learn.widget import WIDGETS

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["WIDGETS"]
