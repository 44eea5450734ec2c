"""Logging set-up: console on the main process, ``log.txt`` (and ``log.txt.rankN``) in the output dir."""
from __future__ import annotations

import logging
import os
import sys

from albef.utils.file_io import PathManager

_FMT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


def setup_logger(output_dir: str | None = None, rank: int = 0, name: str = "albef") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter(_FMT, datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setFormatter(fmt)
        logger.addHandler(ch)
    if output_dir:
        PathManager.mkdirs(output_dir)
        fname = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        fh = logging.StreamHandler(PathManager.open(fname, "a"))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger
