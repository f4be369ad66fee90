"""transformers integration: architecture adapters, compaction, the masked-model reference, save/load."""
from . import attention  # noqa: F401  (registers the "vtrans" attention implementation with transformers)
from .adapters import adapter_for, supported_classes
from .attach import ModelMasks, attach, detach, masks_of
from .compact import compact
from .compensation import bias_compensation_support, compensate_plan
from .masked_eval import masked_by_plan
from .plan import CompactionPlan
from .refit import refit_plan
from .serialization import load_compacted, save_compacted

__all__ = ["CompactionPlan", "ModelMasks", "adapter_for", "attach", "bias_compensation_support", "compensate_plan",
           "detach", "masks_of", "compact", "load_compacted", "masked_by_plan", "refit_plan", "save_compacted",
           "supported_classes"]
