"""The entry point named in pyproject.toml (group ``albef``): registers the objective."""
from albef.plugins import hookimpl


@hookimpl
def albef_register_objectives(register):
    from albef_focal_itc.focal_itc import FocalITCLoss

    register(FocalITCLoss)
