"""GPU launch decisions that CPU tests can check directly: fp32 dots follow torch's TF32 setting, attention tiles
depend on the dtype, and the masked-linear autotuner's candidates, estimates and row buckets (the compile-only
check, tests/test_gpu_compile.py, checks the same decisions against the real compiler)."""
import importlib

import pytest
import torch
import triton

from vtrans_kernels.triton import launch, linear_configs

# the module (the package re-exports its launcher functions under the same names)
attention = importlib.import_module("vtrans_kernels.triton.masked_attention")


@pytest.fixture
def tf32():
    # torch.backends.cuda.matmul is not a plain module: set and restore the flag by hand
    before = torch.backends.cuda.matmul.allow_tf32

    def set_tf32(allowed: bool):
        torch.backends.cuda.matmul.allow_tf32 = allowed
    yield set_tf32
    torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_dots_follow_torchs_tf32_setting(tf32, monkeypatch):
    monkeypatch.setattr(launch, "interpreted", lambda: False)  # the GPU path's config
    tf32(False)
    assert launch.dot_precision(torch.float32) == "ieee"
    assert attention._config(128, 128, 64, torch.float32)["PRECISION"] == "ieee"
    assert attention._config(128, 128, 64, torch.float32, backward=True)["PRECISION"] == "ieee"
    tf32(True)
    assert attention._config(128, 128, 64, torch.float32)["PRECISION"] == "tf32"
    assert launch.dot_precision(torch.bfloat16) == "tf32"  # 16-bit operands: the setting does not apply


def test_attention_tiles_are_smaller_for_fp32(monkeypatch):
    monkeypatch.setattr(launch, "interpreted", lambda: False)
    for d in (64, 128, 256):
        for backward in (False, True):
            half = attention._config(512, 512, d, torch.bfloat16, backward)
            full = attention._config(512, 512, d, torch.float32, backward)
            assert full["BLOCK_M"] * full["BLOCK_N"] * full["num_stages"] < \
                half["BLOCK_M"] * half["BLOCK_N"] * half["num_stages"] * 2, (d, backward)


def test_row_buckets_are_few():
    assert linear_configs.row_bucket(1) == linear_configs.MIN_ROW_BUCKET
    assert linear_configs.row_bucket(257) == 512 and linear_configs.row_bucket(512) == 512
    assert linear_configs.row_bucket(10**7) == linear_configs.MAX_ROW_BUCKET
    assert len({linear_configs.row_bucket(8 * s) for s in range(1, 2049)}) <= 7


def _kept(dtype, swiglu, noise, in_gate, max_shared, arch):
    return [c for c in linear_configs.all_configs()
            if linear_configs.fits(c, dtype, swiglu, noise, in_gate, max_shared, arch)]


@pytest.mark.parametrize("arch,max_shared", [(90, 232448), (80, 166912)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_linear_candidates_fit_every_case(arch, max_shared, dtype):
    for swiglu in (False, True):
        for noise in (False, True):
            for in_gate in (0, 1, 2):
                kept = _kept(dtype, swiglu, noise, in_gate, max_shared, arch)
                assert kept, (arch, dtype, swiglu, noise, in_gate)
                for c in kept:
                    operand = 4 if dtype == torch.float32 else 2
                    assert linear_configs.shared_bytes(c, operand, 1 + swiglu, arch, in_gate) <= max_shared
                    tiles = linear_configs.TILES_FP32 if operand == 4 else linear_configs.TILES_16BIT
                    kw = c.kwargs
                    assert (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], c.num_warps, c.num_stages) in tiles


def test_noise_epilogue_keeps_only_small_accumulators():
    roomy = _kept(torch.bfloat16, False, False, 0, 232448, 90)
    tight = _kept(torch.bfloat16, False, True, 0, 232448, 90)
    assert set(map(str, tight)) < set(map(str, roomy))
    assert all(linear_configs.accumulators_per_thread(c) <= linear_configs.MAX_ACC_PER_THREAD_TIGHT for c in tight)


def test_shared_memory_estimate_matches_measured_tiles():
    # numbers the compiler reported (bench/compile_check.py): bf16 4096^3 SwiGLU 128x128x64, 8 warps, 3 stages
    cfg = triton.Config(dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8), num_warps=8, num_stages=3)
    assert linear_configs.shared_bytes(cfg, 2, 2, 90) == 147456
    # sm_80, per-row input gate, 128x64x64, 4 warps, 4 stages: 172032 bytes (over sm_80's 166912)
    cfg = triton.Config(dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8), num_warps=4, num_stages=4)
    assert linear_configs.shared_bytes(cfg, 2, 1, 80, in_gate=2) == 172032
    assert not linear_configs.fits(cfg, torch.float16, False, False, 2, 166912, 80)
    # fp32 operands with an input gate stage the gated x tile once more: 128x64x32, 8 warps, 3 stages, per-row
    # gate: 98304 bytes on both targets (the --full check found the estimate 16384 short before)
    cfg = triton.Config(dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8), num_warps=8, num_stages=3)
    assert linear_configs.shared_bytes(cfg, 4, 1, 90, in_gate=2) == 98304
    assert linear_configs.shared_bytes(cfg, 4, 1, 80, in_gate=2) == 98304
