"""Mask modules, the size/FLOPs model and the Lagrangian (DESIGN 2.4)."""
from .size_model import ArchitectureSpec, count_flops, count_parameters

__all__ = ["ArchitectureSpec", "count_flops", "count_parameters"]
