"""The examples in README.md and docs/*.md run as written.

Every fenced block whose info string is exactly ``python`` is executed; blocks marked otherwise (``python no-run``
for code that needs a GPU, the network or a long run; ``bash``; plain text) are not; the ``vtrans prune`` and
``vtrans compact`` command lines in ``bash`` blocks are checked against the CLI's own options. The blocks of one file run
in order in one namespace (a guide's later examples build on its earlier ones), in a temporary folder that
holds what the docs call the user's files: ``my-model`` (a tiny random BERT classifier with a tokenizer, from
tests/tiny_text.py) and ``train.csv`` (a tiny labelled text file).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """(info string, first line number, code) of every fenced block of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(3).splitlines())
        out.append((match.group(2).strip(), text.count("\n", 0, match.start()) + 2, code))
    return out


def runnable(path: Path) -> list[tuple[int, str]]:
    return [(line, code) for info, line, code in blocks(path) if info == "python"]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    from tiny_text import model_folder, write_data
    model_folder(tmp_path / "my-model")
    write_data(tmp_path / "train.csv")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_doc_is_found_and_fences_are_balanced():
    assert (ROOT / "docs").is_dir()
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fences = [line for line in text.splitlines() if line.lstrip().startswith("```") and
                  not line.lstrip().startswith("````")]
        assert len(fences) % 2 == 0, f"{path.name}: unbalanced code fences"
        assert len(fences) == 2 * len(blocks(path)), f"{path.name}: a fence the extractor does not see"


def test_readme_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo   # venv + torch 2.14.1" in text and "make test   # the same set-up" in text
    for guide in re.findall(r"\]\((docs/[^)]+\.md)\)", text):
        assert (ROOT / guide).is_file(), guide


COMMAND = re.compile(r"\bvtrans(?:_kernels\.cli)? (prune|compact)\b(.*)")


def test_cli_lines_use_real_options(capsys):
    from vtrans_kernels import cli
    known = {}
    for command in ("prune", "compact"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        known[command] = set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))
    seen = 0
    for path in DOCS:
        for info, line, code in blocks(path):
            if info != "bash":
                continue
            for text in code.replace("\\\n", " ").splitlines():
                match = COMMAND.search(text.split("#")[0])
                if match:
                    seen += 1
                    unknown = set(re.findall(r"--[a-z][a-z0-9-]*", match.group(2))) - known[match.group(1)]
                    assert not unknown, f"{path.name}, block at line {line}: vtrans {match.group(1)} {unknown}"
    assert seen >= 5


@pytest.mark.parametrize("path", [p for p in DOCS if runnable(p)], ids=lambda p: p.name)
def test_examples_run(path, user_folder):
    import torch
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only fight over a shared CPU (10x slower under load)
    namespace = {"__name__": f"doc_{path.stem}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for line, code in runnable(path):
                try:
                    exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
                except Exception as err:
                    raise AssertionError(f"{path.relative_to(ROOT)}, block at line {line}: "
                                         f"{type(err).__name__}: {err}") from err
    finally:
        torch.set_num_threads(threads)
