"""Per-row records of the encoder study and the paired comparison over them (bench/quality/paired.py)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "quality"))
import paired  # noqa: E402
from row_records import append_record, flags, load_records, recorded_cells, records_path  # noqa: E402


def _write(path, method, seed, dev, test=None):
    dev = torch.tensor(dev, dtype=torch.bool)
    append_record(path, {"method": method, "seed": seed, "target_sparsity": 0.5}, "trec",
                  {"dev": dev, "test": dev if test is None else torch.tensor(test, dtype=torch.bool)})


def test_records_round_trip(tmp_path):
    path = records_path(tmp_path / "encoder_trec.csv")
    assert path.name == "encoder_trec.rows.jsonl" and load_records(path) == []
    _write(path, "vtrans", 0, [True, False, True])
    (record,) = load_records(path)
    assert record["cell"] == {"method": "vtrans", "seed": "0", "target_sparsity": "0.5"} and record["dev"] == "101"
    torch.testing.assert_close(flags(record, "dev"), torch.tensor([True, False, True]))
    assert recorded_cells(path, ("seed", "method", "structures")) == {("0", "vtrans", "")}


def test_paired_difference_interval_and_counts(tmp_path):
    path = tmp_path / "r.rows.jsonl"
    gen = torch.Generator().manual_seed(0)
    for seed in (0, 1, 2):
        b = torch.rand(400, generator=gen) < 0.8
        a = b.clone()
        a[:40] = True  # A gets 40 more of the first rows right wherever B missed them
        _write(path, "a", seed, a.tolist())
        _write(path, "b", seed, b.tolist())
        _write(path, "same", seed, b.tolist())
    records = load_records(path)
    a = paired.by_seed(records, {"method": "a"}, "--a")
    b = paired.by_seed(records, {"method": "b"}, "--b")
    result = paired.compare(a, b, "dev", resamples=2000)
    expected = sum(int((~flags(b[s], "dev")[:40]).sum()) for s in ("0", "1", "2"))
    assert result["only_a"] == expected and result["only_b"] == 0
    assert result["diff"] == pytest.approx(100 * expected / 1200)
    assert 0 < result["low"] < result["diff"] < result["high"] and result["not_ahead"] == 0.0
    assert result["seeds"] == ["0", "1", "2"]
    same = paired.compare(paired.by_seed(records, {"method": "same"}, "--a"), b, "test", resamples=500)
    assert (same["diff"], same["low"], same["high"], same["not_ahead"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_errors(tmp_path, capsys):
    path = tmp_path / "x.rows.jsonl"
    _write(path, "a", 0, [True, False])
    _write(path, "a", 0, [True, True])
    _write(path, "b", 1, [True, True])
    _write(path, "c", 0, [True])
    records = load_records(path)
    with pytest.raises(ValueError, match="--a: seed 0 matches more than one cell"):
        paired.by_seed(records, {"method": "a"}, "--a")
    with pytest.raises(ValueError, match="--b: expected column=value pairs, got 'method'"):
        paired.parse_selection(["method"], "--b")
    one = {"0": records[0]}
    with pytest.raises(ValueError, match="no seed has a recorded cell in both selections"):
        paired.compare(one, paired.by_seed(records, {"method": "b"}, "--b"), "dev")
    with pytest.raises(ValueError, match="seed 0: the dev records have 2 and 1 rows"):
        paired.compare(one, paired.by_seed(records, {"method": "c"}, "--b"), "dev")
    with pytest.raises(SystemExit):
        paired.main(["--csv", str(tmp_path / "none.csv"), "--a", "method=a", "--b", "method=b"])
    assert "no per-row records" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paired.main(["--csv", str(tmp_path / "x.csv"), "--a", "method=a", "--b", "method=b"])
    assert "seed 0 matches more than one cell" in capsys.readouterr().err


def test_paired_command_line_prints_both_splits(tmp_path, capsys):
    path = tmp_path / "s.rows.jsonl"
    _write(path, "a", 0, [True, True, False, True], [True, False])
    _write(path, "b", 0, [True, False, False, True], [False, False])
    paired.main(["--csv", str(tmp_path / "s.csv"), "--a", "method=a", "--b", "method=b", "--resamples", "200"])
    out = capsys.readouterr().out
    assert "| dev | 0 | +25.00 |" in out and "| test | 0 | +50.00 |" in out and "| 1 / 0 |" in out
