"""``vtrans export`` end to end on tiny model folders, and the requests it refuses (issue 17, "Done when"): a
folder that is not a model, an unsupported architecture (for GGUF, or at all), an output that exists (unless
--overwrite) or lies inside the model folder; an export that fails half-way leaves nothing behind."""
from __future__ import annotations

import argparse
import contextlib
import io
import os

import pytest
import torch
from tiny_models import build, inputs, output, random_plan

from vtrans_kernels import compact, load_compacted, save_compacted
from vtrans_kernels.export import export_model
from vtrans_kernels.export import onnx as onnx_export
from vtrans_kernels.export.cli import add_export_parser, run_export

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def vtrans_export(*argv: str) -> int:
    """``vtrans export ARGV`` through the subcommand's own parser and runner."""
    parser = argparse.ArgumentParser(prog="vtrans")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return run_export(parser.parse_args(["export", *argv]))


def ort_output(path, batch: dict) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in batch.items()})[0])


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@pytest.fixture(scope="module")
def compacted_folder(tmp_path_factory):
    """A compacted LLaMA (GQA, per-layer shapes, a removed layer) saved with save_compacted."""
    model = build("llama-gqa")
    folder = tmp_path_factory.mktemp("models") / "compacted"
    save_compacted(compact(model, random_plan(model, seed=3)), folder)
    return folder


def snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def exported(compacted_folder, tmp_path_factory):
    """The CLI's ONNX export of the compacted folder, and what it printed."""
    out = tmp_path_factory.mktemp("exports") / "sub" / "model.onnx"  # parent folders are created
    printed, before = io.StringIO(), snapshot(compacted_folder)
    with contextlib.redirect_stdout(printed):
        assert vtrans_export("--model", str(compacted_folder), "--format", "onnx", "--out", str(out)) == 0
    return out, printed.getvalue(), before


def test_export_runs_in_onnx_runtime_and_says_what_loads_it(compacted_folder, exported):
    out, printed, before = exported
    model = load_compacted(compacted_folder)
    batch = inputs(model, batch=3, seq=9)
    torch.testing.assert_close(ort_output(out, batch), output(model, batch), rtol=1e-4, atol=1e-5)
    lines = printed.strip().splitlines()
    assert "loads with vtrans_kernels.load_compacted" in lines[-3]
    assert lines[-2].startswith(f"wrote {out} (") and "output logits [batch, sequence, 61]" in lines[-2]
    assert "onnxruntime.InferenceSession" in lines[-1]
    assert leftovers(out.parent) == [] and sorted(os.listdir(out.parent)) == ["model.onnx"]
    assert snapshot(compacted_folder) == before  # the input folder is untouched


def test_existing_output_is_refused_unless_overwrite(compacted_folder, exported, capsys, monkeypatch):
    out, _, _ = exported
    before = out.read_bytes()
    assert vtrans_export("--model", str(compacted_folder), "--format", "onnx", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and str(out) in err
    assert out.read_bytes() == before
    # with --overwrite, and weights over the single-file limit: graph + <out>.data, both replaced in place
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 1000)
    assert vtrans_export("--model", str(compacted_folder), "--format", "onnx", "--out", str(out), "--overwrite") == 0
    assert f"wrote {out} + {out}.data" in capsys.readouterr().out
    assert sorted(os.listdir(out.parent)) == ["model.onnx", "model.onnx.data"]
    model = load_compacted(compacted_folder)
    batch = inputs(model, batch=1, seq=4)
    torch.testing.assert_close(ort_output(out, batch), output(model, batch), rtol=1e-4, atol=1e-5)


def test_a_plain_transformers_folder_exports_too(tmp_path, capsys):
    model = build("bert")
    model.save_pretrained(tmp_path / "bert")
    out = tmp_path / "bert.onnx"
    assert vtrans_export("--model", str(tmp_path / "bert"), "--format", "onnx", "--out", str(out)) == 0
    assert "loads with from_pretrained" in capsys.readouterr().out
    batch = inputs(model, batch=2, seq=7)
    torch.testing.assert_close(ort_output(out, batch), output(model, batch), rtol=1e-4, atol=1e-5)


def test_gguf_goes_to_the_gguf_writer(compacted_folder, tmp_path, capsys):
    pytest.importorskip("gguf")
    out = tmp_path / "model.gguf"
    assert vtrans_export("--model", str(compacted_folder), "--format", "gguf", "--out", str(out)) == 0
    assert out.read_bytes()[:4] == b"GGUF" and leftovers(tmp_path) == []
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith(f"wrote {out} (") and "llama.cpp" in lines[-1]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "bert"
    save_compacted(compact(build("bert"), random_plan(build("bert"), seed=2)), folder)
    return folder


@pytest.mark.parametrize("case", ["no config", "missing", "a file", "unsupported class", "gguf for bert",
                                  "out inside model", "out is a folder", "onnx option for gguf"])
def test_bad_requests_get_a_one_line_error_and_write_nothing(case, compacted_folder, bert_folder, tmp_path, capsys):
    model, fmt, out, extra = str(compacted_folder), "onnx", str(tmp_path / "x.onnx"), []
    if case == "no config":
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
        model, expected = str(tmp_path / "weights"), "is not a model folder: it has no config.json"
    elif case == "missing":
        model, expected = str(tmp_path / "nowhere"), "does not exist"
    elif case == "a file":
        model, expected = str(compacted_folder / "config.json"), "is a file; expected a model folder"
    elif case == "unsupported class":
        import transformers

        transformers.T5Config(d_model=8, num_layers=1, architectures=["T5ForConditionalGeneration"]).save_pretrained(
            tmp_path / "t5")
        model, expected = str(tmp_path / "t5"), "T5ForConditionalGeneration, which is not supported"
    elif case == "gguf for bert":
        model, fmt, out = str(bert_folder), "gguf", str(tmp_path / "x.gguf")
        expected = "BertForSequenceClassification, which GGUF export does not support"
    elif case == "out inside model":
        out, expected = str(compacted_folder / "model.onnx"), "lies inside the source model folder"
    elif case == "out is a folder":
        out, expected = str(tmp_path), "is a folder; give the path of the file"
    else:
        fmt, extra, expected = "gguf", ["--opset", "17"], "apply to --format onnx only"
    before = sorted(os.listdir(tmp_path))
    model_files = sorted(os.listdir(compacted_folder))
    assert vtrans_export("--model", model, "--format", fmt, "--out", out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vtrans export: error: ") and expected in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == before and sorted(os.listdir(compacted_folder)) == model_files


def test_python_api_names_the_argument(compacted_folder, tmp_path):
    with pytest.raises(ValueError, match="format: expected one of onnx, gguf, got 'tflite'"):
        export_model(compacted_folder, "tflite", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="source: model folder"):
        export_model(tmp_path / "nowhere", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="source: a BertForSequenceClassification, which GGUF"):
        export_model(build("bert"), "gguf", tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="model"):
        export_model(torch.nn.Linear(2, 2), "onnx", tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []


def test_an_interrupted_export_leaves_the_previous_file(compacted_folder, tmp_path, monkeypatch):
    """A crash (or Ctrl-C) while the file is being written: the earlier export stays whole, no temporary remains."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"earlier export")

    class Program:
        def save(self, path, external_data=False):
            with open(path, "wb") as f:
                f.write(b"half a gra")
            raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_trace", lambda *args: Program())
    with pytest.raises(KeyboardInterrupt):
        export_model(compacted_folder, "onnx", out, overwrite=True)
    assert out.read_bytes() == b"earlier export" and sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_vtrans_export_is_wired_into_the_vtrans_command(compacted_folder, tmp_path, capsys):
    from vtrans_kernels import cli

    with pytest.raises(SystemExit) as help_exit:
        cli.main(["export", "--help"])
    if help_exit.value.code != 0:
        pytest.skip("vtrans_kernels/cli.py does not add the export subcommand yet")
    capsys.readouterr()
    assert cli.main(["export", "--model", str(compacted_folder), "--format", "onnx", "--out",
                     str(compacted_folder / "x.onnx")]) == 2
    assert "lies inside the source model folder" in capsys.readouterr().err


def test_ctrl_c_says_nothing_was_written(compacted_folder, tmp_path, monkeypatch, capsys):
    import vtrans_kernels.export as export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_model", interrupted)
    out = tmp_path / "model.onnx"
    assert vtrans_export("--model", str(compacted_folder), "--format", "onnx", "--out", str(out)) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err and not out.exists()
