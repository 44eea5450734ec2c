"""The error of an invalid config file or override (its own module: the loader and the
shipped-config paths both raise it, and neither should import the other for it)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""
