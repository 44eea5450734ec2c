"""Example third-party albef plugin: ``FocalITCLoss``, a focal variant of ITC."""
from albef_focal_itc.focal_itc import FocalITCLoss, focal_soft_cross_entropy

__all__ = ["FocalITCLoss", "focal_soft_cross_entropy"]
