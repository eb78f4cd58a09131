"""Where qkv keeps the user's files: the course's progress, the measured dispatch crossovers.

``$QKV_HOME`` where it is set, else ``$XDG_DATA_HOME/qkv``, else ``~/.local/share/qkv``.

>>> import os
>>> os.environ["QKV_HOME"] = "/somewhere/qkv"
>>> str(data_home())
'/somewhere/qkv'
>>> del os.environ["QKV_HOME"]
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_home"]


def data_home() -> Path:
    """The folder of qkv's user files (it may not exist yet)."""
    home = os.environ.get("QKV_HOME")
    if home:
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "qkv"
