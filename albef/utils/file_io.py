"""One iopath ``PathManager`` for every file the framework reads or writes."""
from iopath.common.file_io import PathManager as _PathManagerCls

PathManager = _PathManagerCls()

__all__ = ["PathManager"]
