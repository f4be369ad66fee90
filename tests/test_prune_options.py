"""The mask-training flags shared by `vtrans prune` and the recipes: each one reaches its PruneConfig field."""
import argparse

import pytest

from vtrans_kernels.prune import PruneConfig
from vtrans_kernels.prune.options import add_mask_options, comma_list, mask_config


def parsed(argv: list[str], **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_mask_options(parser)
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def test_every_flag_reaches_its_config_field():
    args = parsed(["--method", "vib", "--variant", "vtrans", "--structures", "heads,ffn", "--mask-lr", "0.2",
                   "--log-sigma2-init", "-3", "--mask-start", "oneshot", "--settle-fraction", "0.6",
                   "--quench-fraction", "0.3", "--quench-gradient", "exact", "--hidden-distill", "relative",
                   "--compact-from", "original", "--rank-by-calibration", "ffn", "--allocation", "layer"])
    config = PruneConfig(**mask_config(args))
    assert (config.method, config.variant, config.structures) == ("vib", "vtrans", ("heads", "ffn"))
    assert (config.mask_lr, config.mask_init["log_sigma2"], config.mask_start) == (0.2, -3.0, "oneshot")
    assert (config.settle_fraction, config.quench_fraction, config.quench_gradient) == (0.6, 0.3, "exact")
    assert (config.hidden_distill, config.compact_from, config.rank_by_calibration) == ("relative", "original",
                                                                                         ("ffn",))
    assert config.fold_scales is False and config.allocation == "layer"


def test_defaults_are_vtrans_prunes_and_pruneconfigs():
    config = PruneConfig(**mask_config(parsed([])))
    reference = PruneConfig()
    for name in ("method", "variant", "structures", "mask_lr", "mask_start", "settle_fraction", "quench_fraction",
                 "quench_gradient", "hidden_distill", "fold_scales", "compact_from", "rank_by_calibration",
                 "allocation"):
        assert getattr(config, name) == getattr(reference, name), name


def test_a_recipes_defaults_apply_and_the_command_line_overrides_them():
    recipe = dict(mask_lr=0.1, structures="heads,ffn", rank_by_calibration="ffn", settle_fraction=0.85)
    config = PruneConfig(**mask_config(parsed([], **recipe)))
    assert (config.mask_lr, config.structures, config.settle_fraction) == (0.1, ("heads", "ffn"), 0.85)
    assert config.rank_by_calibration == ("ffn",) and config.fold_scales is False  # calibration units: no scales
    config = PruneConfig(**mask_config(parsed(["--rank-by-calibration", "", "--structures", "ffn"], **recipe)))
    assert (config.rank_by_calibration, config.structures, config.fold_scales) == ((), ("ffn",), True)


def test_comma_lists_drop_empty_items():
    assert comma_list("heads,,ffn,") == ("heads", "ffn")
    assert comma_list("") == ()


@pytest.mark.parametrize("structures", ["heads,bogus", ",", ""])
def test_bad_structures_are_refused_by_name(structures):
    with pytest.raises(ValueError, match="structures: expected a non-empty sequence"):
        PruneConfig(**mask_config(parsed(["--structures", structures])))
