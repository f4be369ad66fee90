"""Mask modules, the size/FLOPs model and the Lagrangian (DESIGN 2.4)."""
from .gates import HardConcreteMask, UnitMask, VIBMask, make_mask
from .lagrangian import Lagrangian
from .mask_set import STRUCTURES, Decision, MaskSet
from .size_model import ArchitectureSpec, SizeMeasure, count_flops, count_parameters

__all__ = ["ArchitectureSpec", "Decision", "HardConcreteMask", "Lagrangian", "MaskSet", "STRUCTURES",
           "SizeMeasure", "UnitMask", "VIBMask", "count_flops", "count_parameters", "make_mask"]
