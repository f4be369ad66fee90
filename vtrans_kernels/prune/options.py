"""The mask-training options that ``vtrans prune`` and the recipes in python/ share: one definition of each flag,
and one place where the flags become :class:`PruneConfig` fields."""
import argparse

from ..masks.allocation import ALLOCATIONS
from .config import (COMPACT_SOURCES, MASK_STARTS, QUENCH_GRADIENTS, VARIANTS, PruneConfig, compaction_settings,
                     vib_mask_init)


def comma_list(text: str) -> tuple[str, ...]:
    """The names of a comma-separated command-line list, empty items dropped ("" gives ())."""
    return tuple(filter(None, text.split(",")))


def add_schedule_options(parser: argparse.ArgumentParser) -> None:
    """Add the mask schedule's flags (--mask-start, --settle-fraction, --quench-fraction, --quench-gradient) with
    :class:`PruneConfig`'s defaults; the quality study's drivers add them too."""
    p = parser
    p.add_argument("--mask-start", choices=MASK_STARTS, default=PruneConfig.mask_start,
                   help="oneshot: the masks start at the one-shot plan of the target (activation x weight norms "
                        "on calibration batches of the training data) instead of keeping every unit "
                        "(default %(default)s)")
    p.add_argument("--settle-fraction", type=float, default=PruneConfig.settle_fraction,
                   help="last fraction of the mask steps that end by holding the masks' decision on the target "
                        "(PruneConfig.settle_fraction; default %(default)s, where None is the variant's: 0.5 for "
                        "the variants that train weights, 0.2 for faster)")
    p.add_argument("--quench-fraction", type=float, default=PruneConfig.quench_fraction,
                   help="last fraction of the mask steps (at most --settle-fraction) whose gates have no noise, so "
                        "the weights train in the model the plan compacts to (PruneConfig.quench_fraction; default "
                        "the whole settling for the variants that train weights, VTrans' best setting on MiniLM-L6, "
                        "none for faster; docs/pruning.md)")
    p.add_argument("--quench-gradient", choices=QUENCH_GRADIENTS, default=PruneConfig.quench_gradient,
                   help="the quenched gates' gradient: a removed unit's as if it were kept, or the exact one (zero "
                        "for removed units; PruneConfig.quench_gradient)")


def add_allocation_option(parser: argparse.ArgumentParser) -> None:
    """The --allocation flag (``PruneConfig.allocation``)."""
    parser.add_argument("--allocation", choices=ALLOCATIONS, default=PruneConfig.allocation,
                        help="how the target is shared among the pruned units: 'scores' (one threshold on the masks' "
                             "scores), 'structure' (the same fraction of heads, of neurons and of hidden dims) or "
                             "'layer' (that fraction of every layer's heads and neurons, as the one-shot baseline); "
                             "default %(default)s")


def add_mask_options(parser: argparse.ArgumentParser) -> None:
    """Add the mask-training flags with ``vtrans prune``'s defaults. A recipe that runs other settings by default
    changes them with ``parser.set_defaults`` after this call; the help shows the defaults in force."""
    p = parser
    p.add_argument("--method", choices=("vib", "hard_concrete"), default="vib")
    p.add_argument("--variant", choices=VARIANTS, default="faster")
    p.add_argument("--structures", default=",".join(PruneConfig.structures),
                   help="comma-separated subset of hidden,heads,ffn (default %(default)s)")
    p.add_argument("--mask-lr", type=float, default=PruneConfig.mask_lr,
                   help="learning rate of the mask parameters (default %(default)s)")
    p.add_argument("--log-sigma2-init", type=float, default=None,
                   help="VIB initial log sigma^2 (default -1: near the decision boundary, so a few "
                        "hundred steps reach the target)")
    add_schedule_options(p)
    add_allocation_option(p)
    p.add_argument("--hidden-distill", choices=("mse", "relative"), default=PruneConfig.hidden_distill,
                   help="hidden-state distillation: plain MSE, or MSE relative to the teacher's power per layer "
                        "(for LLaMA-style residual streams, whose plain MSE drowns the size target; default "
                        "%(default)s)")
    p.add_argument("--no-fold-scales", action="store_true",
                   help="keep the chosen units at their original weights instead of folding the masks' learned "
                        "gate values into them (PruneConfig.fold_scales)")
    p.add_argument("--compact-from", choices=COMPACT_SOURCES, default=PruneConfig.compact_from,
                   help="original: compact the input model's weights (before mask training) with the masks' units "
                        "and no scales, then fine-tune (variants vtrans and fast; implies --no-fold-scales)")
    p.add_argument("--rank-by-calibration", default="", metavar="STRUCTURES",
                   help="comma-separated structures (hidden,heads,ffn) whose units the plan takes from the one-shot "
                        "calibration scores at the masks' count per layer, e.g. ffn; '' for none "
                        "(PruneConfig.rank_by_calibration; implies --no-fold-scales; default '%(default)s')")


def mask_config(args: argparse.Namespace) -> dict:
    """The :class:`PruneConfig` keyword arguments of the flags :func:`add_mask_options` added."""
    return dict(method=args.method, variant=args.variant, structures=comma_list(args.structures),
                mask_lr=args.mask_lr, mask_init=vib_mask_init(args.method, args.log_sigma2_init),
                mask_start=args.mask_start, settle_fraction=args.settle_fraction,
                quench_fraction=args.quench_fraction, quench_gradient=args.quench_gradient,
                hidden_distill=args.hidden_distill, allocation=args.allocation,
                **compaction_settings(args.no_fold_scales, args.compact_from, comma_list(args.rank_by_calibration)))
