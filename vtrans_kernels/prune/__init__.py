"""The VTrans pipeline: objective, schedule, distillation, variants, data, checkpoints (DESIGN 2.4)."""
from .config import PruneConfig
from .pruner import NonFiniteLossError, Pruner
from .run import PruneResult, run_pruning

__all__ = ["NonFiniteLossError", "PruneConfig", "PruneResult", "Pruner", "run_pruning"]
