"""`profile_latency` on tiny models: every head count and the FFN grid at each hidden size, reuse of a saved
table, and clear errors."""
import pytest
import torch
from tiny_models import build

from vtrans_kernels.latency import LatencyTable, profile
from vtrans_kernels.latency.profile import REFERENCE_RUNS, _layouts, default_hidden_sizes, profile_latency
from vtrans_kernels.latency.timer import BlockTimer, Stopwatch

FAST = dict(batch_size=1, seq_len=8, repeats=2, warmup=1, threads=1, progress=False)


@pytest.mark.parametrize("name", ["bert", "llama-gqa", "gpt2"])
def test_profile_measures_every_head_count_and_the_ffn_grid(name):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = profile_latency(model, ffn_step=8, hidden_sizes=[8, 16], **FAST)
    assert table.hidden_sizes == [8, 16, 24]
    units = max(table.model["heads"])
    for hidden in table.hidden_sizes:
        attention, ffn = table.attention[hidden], table.ffn[hidden]
        assert attention["widths"] == list(range(units + 1))
        assert ffn["widths"] == [0, 8, 16, 24, 32, 37]
        for points in (attention, ffn):
            assert points["median_ms"][0] == 0.0
            assert all(v > 0 for v in points["estimate_ms"][1:])
            assert all(len(s) >= 2 for s in points["samples_ms"][1:])  # one sample per round at least
        assert table.total[hidden]["estimate_ms"] > 0 and table.fixed[hidden]["estimate_ms"] > 0
        assert len(table.fixed[hidden]["samples_ms"]) == 2 * REFERENCE_RUNS
    assert table.settings["clock"] == "thread" and table.settings["statistic"] == "settled"
    assert table.device["threads"] == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left untouched


def test_layouts_place_every_width_once():
    heads, ffn = list(range(1, 5)), list(range(8, 200, 8))
    layouts = _layouts(heads, ffn, layers=3)
    placed_heads = sorted(h for hs, _ in layouts for h in hs if h)
    placed_ffn = sorted(f for _, fs in layouts for f in fs if f)
    assert placed_heads == heads and placed_ffn == ffn
    assert all(len(hs) == 3 and len(fs) == 3 for hs, fs in layouts)


def test_block_timer_times_each_present_block():
    from vtrans_kernels import CompactionPlan, compact

    model = compact(build("llama-gqa"), CompactionPlan(heads={1: []}, ffn={2: [0, 1, 2]}))
    timer = BlockTimer(model, Stopwatch("wall"))
    ids = torch.randint(0, 50, (1, 6))
    with torch.inference_mode():
        total, blocks = timer.run(lambda: model(input_ids=ids))
    timer.remove()
    assert set(blocks) == {("attention", 0), ("attention", 2), ("ffn", 0), ("ffn", 1), ("ffn", 2)}
    assert blocks[("ffn", 2)][0] == 3 and blocks[("attention", 0)][0] == 2
    assert total > sum(ms for _, ms in blocks.values()) > 0


def test_saved_table_is_reused_when_the_settings_match(tmp_path, monkeypatch):
    model = build("bert")
    path = tmp_path / "table.json"
    first = profile_latency(model, hidden_sizes=[16], path=path, **FAST)
    assert LatencyTable.load(path).to_dict() == first.to_dict()

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(profile, "_measure", no_measuring)
    again = profile_latency(model, hidden_sizes=[16], path=path, **FAST)
    assert again.to_dict() == first.to_dict()
    with pytest.raises(AssertionError, match="measured again"):  # another sequence length is a new table
        profile_latency(model, hidden_sizes=[16], path=path, **{**FAST, "seq_len": 9})


def test_default_hidden_sizes():
    assert default_hidden_sizes(384) == [96, 144, 192, 240, 288, 336, 384]
    assert default_hidden_sizes(24) == [8, 16, 24]


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats: expected a positive int"),
    (dict(seq_len=41), "seq_len: 41 exceeds the model's 40 positions"),
    (dict(hidden_sizes=[30]), "hidden_sizes: expected ints in \\[1, 24\\]"),
    (dict(dtype="int8"), "dtype: expected one of"),
    (dict(threads=2, clock="thread"), "clock: 'thread' does not time cpu with 2 threads"),
    (dict(clock="cuda"), "clock: 'cuda' does not time cpu"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        profile_latency(build("bert"), **{**FAST, **kwargs})


def test_a_compacted_model_is_refused():
    from vtrans_kernels import CompactionPlan, compact

    with pytest.raises(ValueError, match="already compacted; profile .* the unpruned model"):
        profile_latency(compact(build("bert"), CompactionPlan(heads={0: [0]})), **FAST)
