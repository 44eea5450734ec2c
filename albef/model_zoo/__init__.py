"""The configs shipped with albef (``configs/`` of the repository, linked in as
``albef/model_zoo/configs`` when the package is built): see :mod:`albef.config.paths`."""
from albef.config.paths import core_config_dir, core_config_file

__all__ = ["core_config_dir", "core_config_file"]
