"""The backends report and the CLI, and that the package works without the extension."""
import os
import subprocess
import sys

from vtrans_kernels import cli, info, library


def test_report_lists_every_op_and_backend():
    text = info.report()
    for op in library.OPS:
        assert op in text
    for backend in ("triton", "cuda", "cpu", "torch"):
        assert f"  {backend} " in text


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    assert "default backend" in capsys.readouterr().out


def test_package_works_without_the_extension(tmp_path):
    # a stub _C that fails to import stands in for an unbuilt extension
    code = ("import sys, types, torch, warnings\n"
            "sys.modules['vtrans_kernels._C'] = None\n"
            "import vtrans_kernels\n"
            "from vtrans_kernels import ops, _ext\n"
            "assert _ext.ext is None\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    y = ops.vib_gate(torch.ones(2, 3), torch.ones(3), torch.zeros(3), seed=1)\n"
            "    ops.vib_kl(torch.ones(3), torch.zeros(3))\n"
            "assert sum('PyTorch reference' in str(w.message) for w in caught) == 1, caught\n"
            "print('fallback ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout
