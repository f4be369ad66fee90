"""`vtrans prune` and `vtrans compact` against a careless or hostile setup: outputs aimed at inputs, earlier runs'
folders, checkpoints of other runs, crafted pickles and planted links in the output folder, plans for other models,
unreadable inputs; plus reproducible runs and a clean Ctrl-C."""
import hashlib
import os
import re
import shlex

import pytest
import torch
import transformers
from tiny_text import model_folder, tokenizer, write_data

from vtrans_kernels.cli import main
from vtrans_kernels.hf.plan import CompactionPlan, model_record
from vtrans_kernels.prune import Pruner


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model") / "bert")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "train.csv", 48)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_dir, data_file):
    """A finished run (with a teacher fine-tune, so teacher.pt exists) that tests copy before changing."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert _prune(model_dir, data_file, out, "--teacher-steps", "1") == 0
    return out


def _argv(model, data, out, *extra):
    return ["prune", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "4",
            "--batch-size", "8", "--max-length", "12", "--no-progress", "--seq-len", "12", "--checkpoint-every", "2",
            *extra]


def _prune(model, data, out, *extra):
    return main(_argv(model, data, out, *extra))


def _copy(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _snapshot(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


def _messages(err):
    """The command's own lines on stderr (transformers may draw progress bars there too)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("vtrans ")]


def _other_weights(model_dir, folder):
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        model.classifier.bias += 0.5
    model.save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    return folder


def test_out_must_not_be_or_be_inside_or_hold_an_input(tmp_path, model_dir, data_file, capsys):
    before = _snapshot(model_dir)
    assert _prune(model_dir, data_file, model_dir) == 2
    assert f"--out {model_dir} is --model {model_dir}; writing there would overwrite the input" in \
        capsys.readouterr().err
    assert _prune(model_dir, data_file, model_dir / "run") == 2
    assert "is inside --model" in capsys.readouterr().err
    assert _prune(model_dir, data_file, data_file.parent) == 2
    assert f"--data {data_file} lies inside --out" in capsys.readouterr().err
    CompactionPlan().save(tmp_path / "plan.json")
    assert main(["compact", "--model", str(model_dir), "--masks", str(tmp_path / "plan.json"),
                 "--out", str(model_dir)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert _snapshot(model_dir) == before and not (model_dir / "run").exists()


def test_an_earlier_runs_folder_needs_resume_or_overwrite(tmp_path, model_dir, data_file, finished, capsys):
    out = _copy(finished, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    log = (out / "log.jsonl").read_text()
    assert _prune(model_dir, data_file, out) == 2
    assert "is not empty (checkpoint.pt, config.json, kept_units.png, log.jsonl, masks.pt ...); pass --resume " \
           "to continue the run there, --overwrite to replace it" in capsys.readouterr().err
    assert (out / "log.jsonl").read_text() == log  # nothing was truncated
    assert _prune(model_dir, data_file, out, "--resume", "--overwrite") == 2
    assert _prune(model_dir, data_file, out, "--overwrite") == 0  # no teacher this time
    assert not (out / "teacher.pt").exists() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change, difference", [
    ("model", r"input model before the teacher fine-tune \(fingerprint\): \w{12} \(checkpoint\) vs \w{12} "
              r"\(this run\)"),
    ("data", r"data \(texts and labels, fingerprint\): \w{12} \(checkpoint\) vs \w{12} \(this run\)"),
    ("batch", r"settings\.batch_size: 8 \(checkpoint\) vs 4 \(this run\)"),
    ("setting", r"settings\.mask_lr: 0\.05 \(checkpoint\) vs 0\.1 \(this run\)"),
])
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, model_dir, data_file, finished, capsys, change,
                                                   difference):
    out = _copy(finished, tmp_path / "out")
    model, data, extra = model_dir, data_file, ["--teacher-steps", "1", "--resume"]
    if change == "model":
        model = _other_weights(model_dir, tmp_path / "other")
    elif change == "data":
        data = write_data(tmp_path / "other.csv", 40)
    else:
        extra += ["--batch-size", "4"] if change == "batch" else ["--mask-lr", "0.1"]
    checkpoint = (out / "checkpoint.pt").read_bytes()
    assert _prune(model, data, out, *extra) == 2
    (err,) = _messages(capsys.readouterr().err)
    assert "belongs to another run; what differs: " in err
    assert re.search(difference, err), err
    assert (out / "checkpoint.pt").read_bytes() == checkpoint


def test_the_same_seed_gives_a_byte_identical_plan(tmp_path, model_dir, data_file):
    for name in ("a", "b"):
        assert _prune(model_dir, data_file, tmp_path / name, "--teacher-steps", "2", "--variant", "fast",
                      "--finetune-steps", "1") == 0
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path, model_dir, data_file, monkeypatch, capsys):
    original = Pruner.train_step

    def interrupted_at(step):
        def train_step(self, batch):
            if self.step == step:
                raise KeyboardInterrupt
            return original(self, batch)
        return train_step

    monkeypatch.setattr(Pruner, "train_step", interrupted_at(0))
    assert _prune(model_dir, data_file, tmp_path / "early") == 130
    assert _messages(capsys.readouterr().err) == [
        "vtrans prune: interrupted before the first checkpoint; nothing to resume: run the command again with "
        "--overwrite"]
    monkeypatch.setattr(Pruner, "train_step", interrupted_at(3))
    out = tmp_path / "run"
    assert _prune(model_dir, data_file, out) == 130
    (err,) = _messages(capsys.readouterr().err)
    assert err.startswith(f"vtrans prune: interrupted; the last checkpoint is {out / 'checkpoint.pt'}; resume with: "
                          "vtrans prune --model ")
    command = shlex.split(err.split("resume with: ")[1])
    assert command[0] == "vtrans" and command[-1] == "--resume"
    monkeypatch.setattr(Pruner, "train_step", original)
    (out / "compacted" / ".staging-killed.tmp").mkdir(parents=True)  # as if a save there had been killed
    assert main(command[1:]) == 0
    assert (out / "plan.json").is_file() and not (out / "compacted" / ".staging-killed.tmp").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("planted", ["checkpoint.pt", "teacher.pt", "model folder"])
def test_crafted_pickles_create_nothing(tmp_path, model_dir, data_file, finished, capsys, planted):
    marker = tmp_path / "pwned"
    out = _copy(finished, tmp_path / "out")
    model = model_dir
    if planted == "model folder":  # weights as a pickled pytorch_model.bin instead of safetensors
        model = _copy(model_dir, tmp_path / "model")
        (model / "model.safetensors").unlink()
        torch.save({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, model / "pytorch_model.bin")
        assert main(["compact", "--model", str(model), "--masks", str(out / "plan.json"),
                     "--out", str(tmp_path / "compacted")]) == 2
        assert "cannot load" in capsys.readouterr().err
        out = tmp_path / "fresh"
    else:
        torch.save({"step": 1, "masks": _Payload(marker)}, out / planted)
    assert _prune(model, data_file, out, "--teacher-steps", "1", *(["--resume"] if out.exists() else [])) == 2
    err = capsys.readouterr().err
    assert ("could run code, so it is not loaded" if planted != "model folder" else "--model: cannot load") in err
    assert not marker.exists()


def test_links_planted_in_the_output_folder_are_not_followed(tmp_path, model_dir, data_file, finished, capsys):
    victims = tmp_path / "victims"
    victims.mkdir()
    out = _copy(finished, tmp_path / "out")
    (out / "compacted").symlink_to(victims)  # the run's compacted model would land in the victims' folder
    (out / ".staging-killed.tmp").mkdir()  # what a save killed midway leaves
    names = ("config.json", "plan.json", "summary.json", "masks.pt", "kept_units.png", "training.png",
             "checkpoint.pt.tmp", "plan.json.tmp")
    for name in names:
        (victims / name).write_text("keep me")
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(victims / name)
    assert _prune(model_dir, data_file, out, "--teacher-steps", "1", "--resume") == 0
    assert all((victims / name).read_text() == "keep me" for name in names)
    assert sorted(os.listdir(victims)) == sorted(names)
    assert not any((out / name).is_symlink() for name in os.listdir(out))
    assert not [name for name in os.listdir(out) + os.listdir(out / "compacted") if name.endswith(".tmp")]
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").symlink_to(victims / "plan.json")
    assert _prune(model_dir, data_file, out, "--teacher-steps", "1", "--resume") == 2
    assert "log.jsonl is a symbolic link; refusing to follow it" in capsys.readouterr().err


def test_compact_refuses_plans_for_other_models(tmp_path, model_dir, finished, capsys):
    args = ["compact", "--model", str(model_dir), "--out", str(tmp_path / "small"), "--masks"]
    llama = tmp_path / "llama.json"
    CompactionPlan(heads={0: [0]}, model=model_record("llama", 24, [2, 2, 2], [37] * 3)).save(llama)
    assert main(args + [str(llama)]) == 2
    assert ("plan: it was made for another model (model_type: plan made for 'llama', model has 'bert'; "
            "heads: plan made for [2, 2, 2], model has [4, 4, 4])") in capsys.readouterr().err
    other = _other_weights(model_dir, tmp_path / "other")
    other_args = ["compact", "--model", str(other), "--out", str(tmp_path / "small"), "--masks",
                  str(finished / "plan.json")]
    assert main(other_args) == 2
    assert "the plan was made for a model with other weights" in capsys.readouterr().err
    assert main(other_args + ["--force"]) == 0
    assert main(args + [str(finished / "plan.json")]) == 2  # --out now holds a model
    assert "is not empty" in capsys.readouterr().err
    assert main(args + [str(finished / "plan.json"), "--overwrite"]) == 2  # the plan was made on the teacher
    assert "other weights" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["zero-byte weights", "truncated weights", "zero-byte data", "header-only data",
                                  "label outside the classifier", "plan index 1e400"])
def test_unreadable_inputs_are_one_line_errors(tmp_path, model_dir, data_file, capsys, case):
    model, data = model_dir, data_file
    if "weights" in case:
        model = _copy(model_dir, tmp_path / "model")
        weights = model / "model.safetensors"
        weights.write_bytes(b"" if "zero" in case else weights.read_bytes()[:1000])
    elif "data" in case:
        data = tmp_path / "data.csv"
        data.write_text("" if "zero" in case else "text,label\n")
    elif "classifier" in case:  # the model folder holds a trained 2-label classifier
        data = tmp_path / "data.csv"
        data.write_text("text,label\nw1 w2,0\nw3,1\nw4 w5,2\n")
    if case == "plan index 1e400":
        (tmp_path / "plan.json").write_text('{"ffn": {"0": [1e400]}}')
        code = main(["compact", "--model", str(model), "--masks", str(tmp_path / "plan.json"),
                     "--out", str(tmp_path / "out")])
    else:
        code = _prune(model, data, tmp_path / "out")
    (err,) = _messages(capsys.readouterr().err)
    assert code == 2
    assert {"zero-byte weights": "--model: cannot load", "truncated weights": "--model: cannot load",
            "zero-byte data": "is empty (0 bytes)", "header-only data": "has a header (text, label) but no data rows",
            "label outside the classifier": "row 3 (line 4), column 'label': class id 2 is outside the model's 2 "
                                            "labels (0..1)",
            "plan index 1e400": "expected integer unit indices, got inf"}[case] in err
