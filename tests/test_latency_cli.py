"""`vtrans profile` and `vtrans prune --target latency` end to end on a tiny model folder, and their errors."""
import json
import re

import pytest

from latency_tables import synthetic_table
from tiny_text import model_folder, write_data
from vtrans_kernels.cli import _profile_model, main
from vtrans_kernels.hf import adapter_for, load_compacted
from vtrans_kernels.latency import LatencyTable
from vtrans_kernels.latency.model import LatencyMeasure

PROFILE = ["--batch-size", "1", "--seq-len", "16", "--threads", "1", "--repeats", "2", "--warmup", "1",
           "--hidden-sizes", "8,16", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model") / "bert")


def _prune(folder, data, out, *extra):
    return ["prune", "--model", str(folder), "--data", str(data), "--out", str(out), "--steps", "6",
            "--batch-size", "8", "--max-length", "16", "--no-progress", *extra]


def test_profile_then_prune_to_a_speedup(tmp_path, folder, capsys):
    table_path = tmp_path / "table.json"
    assert main(["profile", "--model", str(folder), "--out", str(table_path), *PROFILE]) == 0
    printed = capsys.readouterr().out
    assert "hidden sizes: [8, 16, 24]" in printed and f"wrote {table_path}" in printed
    table = LatencyTable.load(table_path)
    assert (table.batch_size, table.seq_len, table.dtype) == (1, 16, "float32")
    assert main(["profile", "--model", str(folder), "--out", str(table_path), *PROFILE]) == 0
    assert "reusing" in capsys.readouterr().out  # same settings, device, versions and model

    data = write_data(tmp_path / "train.csv")
    out = tmp_path / "out"
    assert main(_prune(folder, data, out, "--target", "latency", "--target-speedup", "1.5", "--profile",
                       str(table_path))) == 0
    printed = capsys.readouterr().out
    assert re.search(r"speedup by the latency table: target / plan +1\.50x / ", printed)
    summary = json.loads((out / "summary.json").read_text())
    calibration = summary["latency"]["calibration"]  # timed here against the unpruned model, re-planned if it missed
    assert summary["target"] == "latency" and 1 <= len(calibration["attempts"]) <= 4
    chosen = calibration["attempts"][calibration["chosen"]]
    assert chosen["table_speedup"] == pytest.approx(summary["latency"]["table_speedup"])
    plans = len(calibration["attempts"])
    assert re.search(rf"measured speedup here \(plans timed\) +{chosen['measured']:.2f}x \({plans}\)", printed)
    model = load_compacted(out / "compacted")
    units = adapter_for(model).units()
    measure = LatencyMeasure(table, adapter_for(_profile_model(str(folder), "classification")).spec())
    assert measure.speedup(units.hidden, list(units.heads), list(units.ffn)) == pytest.approx(
        summary["latency"]["table_speedup"])
    assert units.hidden in table.hidden_sizes
    for layer, width in enumerate(units.ffn):  # every FFN width is one the table shows fast
        assert width in table.curve("ffn", units.hidden).fast_widths(37), (layer, width)

    assert main(_prune(folder, data, tmp_path / "kept", "--target", "latency", "--target-speedup", "1.5",
                       "--profile", str(table_path), "--no-calibrate")) == 0
    assert "measured speedup here" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert summary["latency"]["calibration"] is None and summary["latency"]["table_speedup"] >= 1.5  # the table's plan


@pytest.mark.parametrize("extra, message", [
    (["--target", "latency", "--profile", "TABLE"], "target_speedup: expected a number > 1"),
    (["--target", "latency", "--target-speedup", "0.9", "--profile", "TABLE"], "target_speedup: expected a number > 1"),
    (["--target", "latency", "--target-speedup", "2"], "latency_table (--profile): expected the path of a latency"),
    (["--target", "latency", "--target-speedup", "1e4", "--profile", "TABLE"], "target_speedup: 10000x is beyond"),
    (["--target", "latency", "--target-speedup", "2", "--profile", "TABLE", "--round-to", "8"],
     "round_to: with target='latency'"),
    (["--target", "latency", "--target-speedup", "2", "--profile", "OTHER"],
     "this latency table does not fit the run: device: the table was measured on cuda 'NVIDIA H200'"),
    (["--target-speedup", "2"], "target_speedup: only used with target='latency'"),
])
def test_prune_errors_name_the_argument(tmp_path, folder, capsys, extra, message):
    table = synthetic_table(_profile_model(str(folder), "classification"))
    table.save(tmp_path / "table.json")
    table.device = {"type": "cuda", "name": "NVIDIA H200"}
    table.save(tmp_path / "other.json")
    names = {"TABLE": str(tmp_path / "table.json"), "OTHER": str(tmp_path / "other.json")}
    extra = [names.get(a, a) for a in extra]
    data = write_data(tmp_path / "train.csv")
    assert main(_prune(folder, data, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err


def test_profile_errors(tmp_path, folder, capsys):
    assert main(["profile", "--model", str(folder), "--out", str(tmp_path), *PROFILE]) == 2
    assert "is a folder; expected the table's .json file" in capsys.readouterr().err
    assert main(["profile", "--model", str(folder), "--out", str(tmp_path / "t.json"), *PROFILE[:-3],
                 "--hidden-sizes", "8,x"]) == 2
    assert "--hidden-sizes: expected comma-separated ints" in capsys.readouterr().err
    assert main(["profile", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t.json"), *PROFILE]) == 2
    assert "--model: no transformers model folder" in capsys.readouterr().err
