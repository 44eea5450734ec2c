"""Errors caused by the user's input (config, data, checkpoints): reported as one clear line, no traceback."""
from __future__ import annotations

import sys

from albef.checkpoint.checkpointer import CheckpointMismatchError
from albef.config.loader import ConfigError
from albef.data.files import DataError
from albef.data.tokenization import TokenizerError
from albef.plugins.manager import PluginError
from albef.registry import ComponentError

USER_ERRORS = (ConfigError, ComponentError, DataError, TokenizerError, CheckpointMismatchError, PluginError)


def report_user_error(e: BaseException) -> None:
    print(f"error: {e}", file=sys.stderr, flush=True)
