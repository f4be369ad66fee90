"""`vtrans compact` end to end on a saved tiny model."""
import pytest
from tiny_models import build, inputs, output, random_plan

from vtrans_kernels import compact, load_compacted
from vtrans_kernels.cli import main


def test_vtrans_compact_writes_a_loadable_model(tmp_path, capsys):
    model = build("roberta", 21)
    model.save_pretrained(tmp_path / "model")
    plan = random_plan(model, 21)
    plan.save(tmp_path / "plan.json")
    assert main(["compact", "--model", str(tmp_path / "model"), "--masks", str(tmp_path / "plan.json"),
                 "--out", str(tmp_path / "out"), "--round-to", "2"]) == 0
    printed = capsys.readouterr().out
    assert "parameters:" in printed and "kept)" in printed
    reloaded = load_compacted(tmp_path / "out", attn_implementation="eager")
    batch = inputs(model)
    expected = output(compact(model, plan, round_to=2), batch)
    assert (output(reloaded, batch) - expected).abs().max() <= 1e-6 * expected.abs().max()


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}/none", "--masks", "{tmp}/plan.json"], "no config.json"),
    (["--model", "{tmp}/model", "--masks", "{tmp}/missing.json"], "does not exist"),
])
def test_vtrans_compact_errors(tmp_path, capsys, args, message):
    model = build("bert")
    model.save_pretrained(tmp_path / "model")
    random_plan(model, 0).save(tmp_path / "plan.json")
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["compact", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
