"""Where the configs shipped with albef live, so a plugin's config can ``_base_`` them.

``_base_: albef://pretrain/synthetic.yaml`` (or :func:`core_config_file`) names a file of
the repository's ``configs/`` folder. An installed package carries a copy in
``albef/model_zoo/configs`` (``setup.py`` links it in at build time, as detectron2's
model zoo); a source checkout or an editable install reads ``configs/`` directly.
"""
from __future__ import annotations

import os

from albef.config.errors import ConfigError

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../albef


def core_config_dir() -> str:
    """The directory of albef's own configs (installed copy first, then the source checkout)."""
    for d in (os.path.join(_PKG, "model_zoo", "configs"), os.path.join(os.path.dirname(_PKG), "configs")):
        if os.path.isdir(d):
            return d
    raise FileNotFoundError("albef's configs are not installed (no albef/model_zoo/configs and no configs/ beside the package)")


def core_config_file(name: str) -> str:
    """``core_config_file("pretrain/synthetic.yaml")`` -> its absolute path; a missing name is an error listing the folders."""
    root = core_config_dir()
    path = os.path.normpath(os.path.join(root, name))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        sub = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise ConfigError(f"albef://{name}: no such config shipped with albef (in {root}; folders: {', '.join(sub)})")
    return path
