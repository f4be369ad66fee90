"""`vtrans prune` end to end on tiny models, and its errors; the data loaders."""
import json

import pytest
import torch

from tiny_text import model_folder, write_data
from vtrans_kernels.cli import main
from vtrans_kernels.hf import CompactionPlan, load_compacted
from vtrans_kernels.prune.data import Batches, load_text_data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model") / "bert")


def _args(folder, data, out, *extra):
    return ["prune", "--model", str(folder), "--data", str(data), "--out", str(out), "--steps", "6",
            "--batch-size", "8", "--max-length", "16", "--no-progress", "--seq-len", "16", *extra]


def test_prune_classification_writes_everything(tmp_path, folder, capsys):
    data = write_data(tmp_path / "train.csv")
    assert main(_args(folder, data, tmp_path / "out", "--target-sparsity", "0.4", "--teacher-steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "teacher accuracy" in printed and "compacted accuracy" in printed
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["achieved_sparsity"] - 0.4) <= 0.03
    assert summary["parameters"]["compacted"] < summary["parameters"]["original"]
    model = load_compacted(out / "compacted")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 2
    logits = model(input_ids=torch.tensor([[2, 7, 9, 3]])).logits
    assert logits.shape == (1, 2)
    for name in ("plan.json", "log.jsonl", "checkpoint.pt", "kept_units.png", "teacher.pt"):
        assert (out / name).is_file(), name
    # A second invocation with --resume continues from the finished checkpoint and gives the same plan.
    plan = (out / "plan.json").read_text()
    assert main(_args(folder, data, out, "--target-sparsity", "0.4", "--teacher-steps", "2", "--resume")) == 0
    assert (out / "plan.json").read_text() == plan


def test_prune_lm_on_a_decoder(tmp_path):
    folder = model_folder(tmp_path / "llama", "llama-gqa")
    data = write_data(tmp_path / "text.jsonl", fmt="jsonl", columns=("text",))
    assert main(_args(folder, data, tmp_path / "out", "--task", "lm", "--method", "hard_concrete",
                      "--variant", "fast", "--finetune-steps", "2", "--subset-fraction", "1.0",
                      "--target", "flops", "--hidden-distill", "relative", "--no-fold-scales",
                      "--settle-fraction", "0.5", "--quench-fraction", "0.5", "--quench-gradient", "exact")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["compacted"]["perplexity"] > 1 and summary["target"] == "flops"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_distill"] == "relative" and config["fold_scales"] is False
    assert (config["settle_fraction"], config["quench_fraction"], config["quench_gradient"]) == (0.5, 0.5, "exact")
    assert CompactionPlan.load(tmp_path / "out" / "plan.json").ffn_scale == {}


@pytest.mark.parametrize("change,message", [
    ({"--model": "missing-dir"}, "--model"),
    ({"--data": "missing.csv"}, "no such file"),
    ({"--target-sparsity": "1.2"}, "target_sparsity"),
    ({"--data": "nolabel.csv"}, "label"),
    ({"--data": "bad.txt"}, "--data"),
    ({"--quench-fraction": "0.3"}, "quench_fraction: expected at most settle_fraction (0.2)"),
])
def test_prune_errors(tmp_path, folder, capsys, change, message):
    write_data(tmp_path / "nolabel.csv", columns=("text",))
    (tmp_path / "bad.txt").write_text("not a table")
    args = {"--model": str(folder), "--data": str(write_data(tmp_path / "ok.csv")), "--target-sparsity": "0.5"}
    for key, value in change.items():
        args[key] = value if key.endswith("-fraction") or key == "--target-sparsity" or value == "missing-dir" \
            else str(tmp_path / value)
    argv = ["prune", "--out", str(tmp_path / "out"), "--no-progress"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_load_text_data_formats_and_labels(tmp_path):
    csv_data = load_text_data(str(write_data(tmp_path / "a.csv", 20)), "classification")
    jsonl = load_text_data(str(write_data(tmp_path / "a.jsonl", 20, fmt="jsonl")), "classification")
    assert csv_data.texts == jsonl.texts and csv_data.labels == jsonl.labels
    assert csv_data.label_names == ["neg", "pos"] and set(csv_data.labels) == {0, 1}
    with pytest.raises(ValueError, match="task"):
        load_text_data(str(tmp_path / "a.csv"), "ner")
    train, dev = csv_data.split(0.25, seed=0)
    assert len(dev.texts) == 5 and len(train.texts) == 15
    assert sorted(train.texts + dev.texts) == sorted(csv_data.texts)


def test_batches_are_a_function_of_the_step():
    features = {"input_ids": torch.arange(50).view(25, 2), "labels": torch.arange(25)}
    a, b = Batches(features, 4, seed=3), Batches(features, 4, seed=3)
    assert all(torch.equal(a.batch(s)["labels"], b.batch(s)["labels"]) for s in (0, 9, 6, 0))
    epoch = torch.cat([a.batch(s)["labels"] for s in range(25)])  # 100 rows = 4 epochs of 25
    for e in range(4):
        assert sorted(epoch[e * 25:(e + 1) * 25].tolist()) == list(range(25))
    subset = Batches(features, 4, seed=3, fraction=0.2)
    assert len(subset) == 5
    seen = {int(v) for s in range(10) for v in subset.batch(s)["labels"]}
    assert len(seen) == 5
    assert sorted(int(v) for batch in subset.sequential(2) for v in batch["labels"]) == sorted(seen)


@pytest.mark.parametrize("arch", ["bert", "llama-gqa"])
def test_prune_uniform_loads_with_plain_from_pretrained(tmp_path, arch):
    import transformers

    folder = model_folder(tmp_path / arch, arch)
    task = ("--task", "lm") if arch == "llama-gqa" else ()
    data = write_data(tmp_path / "train.jsonl", fmt="jsonl", columns=("text",) if task else ("text", "label"))
    out = tmp_path / "out"
    assert main(_args(folder, data, out, "--target-sparsity", "0.5", "--uniform", "--round-to", "2", *task)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["achieved_sparsity"] - 0.5) <= 0.05
    assert len({k for k, _ in summary["kept"]["heads"]}) == 1 and len({k for k, _ in summary["kept"]["ffn"]}) == 1
    auto = transformers.AutoModelForCausalLM if task else transformers.AutoModelForSequenceClassification
    plain = auto.from_pretrained(out / "compacted").eval()
    ours = load_compacted(out / "compacted")
    ids = torch.tensor([[2, 7, 9, 3, 11]])
    with torch.no_grad():  # the attention implementations may differ (sdpa, eager): fp32 rounding apart
        torch.testing.assert_close(plain(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
