"""Deployment speed of compacted models: dense vs compacted latency and throughput, next to the FLOPs ratio.

For a BERT-base-shaped encoder and a LLaMA-style GQA decoder (random weights of real shapes), builds plans
at several parameter sparsities of the layers (the same fraction of heads/KV groups, FFN neurons and hidden
dims in every layer, random units), compacts with and without ``round_to``, and times in the same run, in two
engines: PyTorch (encoder forward; decoder prefill, one forward over the prompt, and decode, one new token per
step against a KV cache of the prompt) and ONNX Runtime on CPU (the exported graph of
:func:`vtrans_kernels.export.export_onnx`: a full forward, no KV cache, so one prefill for the decoder). Reports
median ms, tokens/s, the speedup over the dense model in the same engine and the FLOPs reduction from the size
model, and their ratio. Goal on a GPU: speedup >= 0.8x the FLOPs reduction at batch 32 x seq 128 for the
BERT-base shape at 50/75/90% sparsity. Without a GPU it runs small shapes and reports CPU numbers only.

Timings meant to hold on a shared machine (:func:`compare`): each compacted model is timed against the dense
model in alternating calls (ABBA...), and the speedup is the median over pairs of adjacent calls, so that a
neighbour's job slows both sides alike; rounds repeat until two consecutive rounds agree on the speedup within
10%, in wall time and in thread CPU time (what a descheduled process does not count), at most ``max_rounds``
rounds (rows say whether they converged); rows report medians and p20/p80 of the last two rounds, and the
speedup's p20/p80 over their pairs. CPU runs use one
thread in each engine unless told otherwise: on a 2-core machine shared with other jobs a second thread mostly
waits for a core. Rows go to bench/results/bench_compacted.csv (``--csv``), the table is printed (and written to
``--markdown``); measured results are kept in bench/results/compacted/.

Usage: python bench/bench_compacted.py [--arch bert llama] [--sparsities 0.5 0.75 0.9] [--batch 32 --seq 128]
       [--dtype bfloat16] [--engines pytorch onnxruntime] [--threads N] [--smoke]; the suite
       (python -m bench) calls ``run(device, smoke)`` (PyTorch only with ``smoke``, as CI runs it).
"""
import argparse
import inspect
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf
from common import RESULTS_DIR, append_rows, default_device, environment, timing

from vtrans_kernels import CompactionPlan, compact
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.masks import count_flops, count_parameters

RESULTS = RESULTS_DIR / "bench_compacted.csv"

SHAPES = {  # (GPU shape, CPU smoke shape)
    "bert": (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
             dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)),
    "llama": (dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                   intermediate_size=2816, head_dim=64),
              dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                   intermediate_size=704, head_dim=32)),
}


def build(arch: str, gpu: bool):
    shape = SHAPES[arch][0 if gpu else 1]
    if arch == "bert":
        return tf.BertModel(tf.BertConfig(vocab_size=30522, max_position_embeddings=512, **shape))
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32000, **shape))


def uniform_plan(model, sparsity: float, seed: int) -> CompactionPlan:
    """Keep the same fraction r of every structure in every layer, r chosen so that the layers' parameters
    drop by ``sparsity`` (size model, embeddings excluded); random units."""
    spec = adapter_for(model).spec()
    full = count_parameters(spec, embeddings=False)

    def counts(r):
        return (max(1, round(r * spec.hidden_size)), [max(1, round(r * u)) for u in spec.units_per_layer],
                [max(1, round(r * f)) for f in spec.ffn_per_layer])

    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if count_parameters(spec, *counts(mid), embeddings=False) > (1 - sparsity) * full:
            high = mid
        else:
            low = mid
    hidden, heads, ffn = counts(low)
    gen = torch.Generator().manual_seed(seed)

    def pick(total, n):
        return sorted(torch.randperm(total, generator=gen)[:n].tolist())

    return CompactionPlan(hidden=pick(spec.hidden_size, hidden),
                          heads={i: pick(spec.units_per_layer[i], n) for i, n in enumerate(heads)},
                          ffn={i: pick(spec.ffn_per_layer[i], n) for i, n in enumerate(ffn)})


def measurements(arch: str, model, batch: int, seq: int, device: str):
    """{mode: (callable, tokens per call)} for the model's deployment modes."""
    ids = torch.randint(3, 1000, (batch, seq), device=device)
    if arch == "bert":
        return {"forward": (lambda: model(input_ids=ids), batch * seq)}
    cache_holder = {}

    def prefill():
        cache_holder["out"] = model(input_ids=ids, use_cache=True)
        return cache_holder["out"]

    prefill()
    next_ids = ids[:, -1:]
    # transformers 5.24 renamed the forward's ``past_key_values`` argument to ``cache``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode():
        cache = cache_holder["out"].past_key_values
        out = model(input_ids=next_ids, use_cache=True, **{cache_arg: cache})
        cache.crop(-1)  # drop the new position again so every timed step sees the same cache length
        return out

    return {"prefill": (prefill, batch * seq), "decode": (decode, batch)}


def compare(dense_fn, compact_fn, *, device: str = "cpu", min_repeats: int = 5, round_s: float = 0.3,
            max_rounds: int = 6, tolerance: float = 0.10, clock=None) -> dict:
    """Time ``dense_fn`` against ``compact_fn`` in alternating calls, in rounds, until two consecutive rounds
    agree on the speedup within ``tolerance`` (on a CPU, in wall time and in thread CPU time both), or
    ``max_rounds`` rounds ran.

    Each round makes ``n`` calls of each, ordered ABBA ABBA... with ``n >= min_repeats`` and enough calls for
    the round to last about ``round_s`` seconds. The speedup of a round is the median, over its pairs of
    adjacent calls, of dense time / compacted time: the two calls of a pair ran on the same machine, so a
    neighbour's job that slows a stretch of calls slows both sides of the pairs in it alike. Returns the dense
    and compacted (median, p20, p80) ms of the last two rounds together, ``speedup`` and its
    ``speedup_p20``/``speedup_p80`` over their pairs, ``cpu_speedup`` (the same in thread CPU time, which a
    descheduled process does not accumulate; meaningful with one thread, meaningless on a GPU), ``rounds``,
    ``repeats`` (n), ``converged`` and ``agreement`` (relative difference of the last two rounds' speedups,
    the larger of wall and CPU time on a CPU). ``clock`` (tests) replaces the (wall, cpu) seconds clock."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = clock or (lambda: (time.perf_counter(), time.thread_time()))

    def call(fn):
        sync()
        wall0, cpu0 = clock()
        fn()
        sync()
        wall1, cpu1 = clock()
        return (wall1 - wall0) * 1e3, (cpu1 - cpu0) * 1e3

    def ratios(dense, compacted, which):  # per pair of adjacent calls; inf-safe for a clock that did not move
        return sorted(d[which] / c[which] if c[which] > 0 else math.nan for d, c in zip(dense, compacted))

    for fn in (dense_fn, compact_fn, dense_fn, compact_fn):  # warm-up: allocator, ORT's first-run work, caches
        fn()
    pair = call(dense_fn)[0] + call(compact_fn)[0]
    n = max(min_repeats, min(200, math.ceil(round_s * 1e3 / max(pair, 1e-3))))
    rounds, speedups = [], []
    while True:
        samples = {"dense": [], "compact": []}
        for i in range(n):
            order = ("dense", "compact") if i % 2 == 0 else ("compact", "dense")
            for name in order:
                samples[name].append(call(dense_fn if name == "dense" else compact_fn))
        rounds.append(samples)
        speedups.append([statistics.median(ratios(samples["dense"], samples["compact"], k)) for k in (0, 1)])
        agreement = math.inf
        if len(speedups) > 1:
            kinds = (0,) if device == "cuda" else (0, 1)
            agreement = max(abs(speedups[-1][k] / speedups[-2][k] - 1) for k in kinds)
        if agreement <= tolerance or len(rounds) >= max_rounds:
            break
    dense = [s for r in rounds[-2:] for s in r["dense"]]
    compacted = [s for r in rounds[-2:] for s in r["compact"]]
    wall_ratios = ratios(dense, compacted, 0)
    speedup, speedup_p20, speedup_p80 = _quantiles(wall_ratios)
    return dict(dense=_quantiles([w for w, _ in dense]), compact=_quantiles([w for w, _ in compacted]),
                speedup=speedup, speedup_p20=speedup_p20, speedup_p80=speedup_p80,
                cpu_speedup=statistics.median(ratios(dense, compacted, 1)), rounds=len(rounds), repeats=n,
                converged=agreement <= tolerance, agreement=agreement)


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=5) if len(samples) > 1 else [samples[0]] * 4
    return statistics.median(samples), q[0], q[3]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and the cores this process may use."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def ort_measurements(arch: str, variants: list, batch: int, seq: int, folder: Path, threads: int) -> dict:
    """{(label, sparsity): callable} running each variant's ONNX export (fp32, whatever the PyTorch dtype) in ONNX
    Runtime (CPU) on one batch; exports once per variant into ``folder``."""
    import numpy as np
    import onnxruntime as ort

    from vtrans_kernels.export import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    ids = torch.randint(3, 1000, (batch, seq), generator=torch.Generator().manual_seed(0)).numpy()
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    fns = {}
    for label, sparsity, _, model in variants:
        path = folder / f"{arch}-{label}-{sparsity}.onnx"
        if not path.exists():
            export_onnx(model, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        fns[(label, sparsity)] = lambda s=session: s.run(None, feed)
    return fns


def run(device: str, smoke: bool, archs=tuple(SHAPES), sparsities=(0.5, 0.75, 0.9), batches=None, seqs=None,
        round_to: int | None = None, dtype: str | None = None, engines=None, threads: int | None = None,
        max_rounds: int | None = None, round_s: float | None = None) -> list[dict]:
    """Time dense against compacted models on ``device``; one row per (engine, arch, variant, mode, batch, seq).
    Defaults: real shapes, batch 1/8/32 x seq 128/512, round_to 64, bf16 on a GPU; the small CPU shapes at
    batch 4 x seq 64 (batch 2 x seq 16 with ``smoke``), round_to 8, fp32 and one thread on
    CPU. Timing rounds (:func:`compare`) of about ``round_s`` seconds (1; 0.1 with ``smoke``), ``max_rounds`` at
    most (6; 2 with ``smoke``). ``engines``: "pytorch" and "onnxruntime" (CPU only; the default when onnxruntime
    and onnxscript are installed, except with ``smoke``, where exporting would dominate a CI run)."""
    gpu = device == "cuda"
    if not gpu:
        print("no GPU: CPU run at small shapes; the GPU goal (>= 0.8x the FLOPs reduction) needs a GPU")
    batches = batches or ([1, 8, 32] if gpu else [2 if smoke else 4])
    seqs = seqs or ([128, 512] if gpu else [16 if smoke else 64])
    round_to = round_to or (64 if gpu else 8)
    dtype = getattr(torch, dtype or ("bfloat16" if gpu else "float32"))
    max_rounds = max_rounds or (2 if smoke else 6)
    round_s = round_s or (0.1 if smoke else 1.0)
    if engines is None:
        engines = ("pytorch",) if smoke or gpu or not _ort_available() else ("pytorch", "onnxruntime")
    if "onnxruntime" in engines and gpu:
        raise ValueError("engines: onnxruntime runs here on CPU only; time it with device cpu")
    threads = threads or (torch.get_num_threads() if gpu else 1)
    # the machine's state when the run started: on a shared machine the load says how busy the neighbours were
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    env = dict(environment(device), cpu=cpu_model(), threads=threads, load_avg=load,
               started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    rows = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # no_grad, not inference_mode: torch.export (the ONNX export) cannot trace inference tensors
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
            for arch in archs:
                dense = build(arch, gpu).to(device=device, dtype=dtype).eval()
                spec = adapter_for(dense).spec()
                variants = [("dense", 0.0, 1, dense)]
                for sparsity in sparsities:
                    plan = uniform_plan(dense, sparsity, seed=0)
                    for rnd in (1, round_to):
                        variants.append((f"compact{'' if rnd == 1 else f'-round{rnd}'}", sparsity, rnd,
                                         compact(dense, plan, round_to=rnd)))
                for batch in batches:
                    for seq in seqs:
                        calls = {}  # engine -> {mode: {(label, sparsity): (callable, tokens)}}
                        if "pytorch" in engines:
                            for label, sparsity, _, model in variants:
                                for mode, fn in measurements(arch, model, batch, seq, device).items():
                                    calls.setdefault("pytorch", {}).setdefault(mode, {})[(label, sparsity)] = fn
                        if "onnxruntime" in engines:
                            fns = ort_measurements(arch, variants, batch, seq, Path(folder), threads)
                            mode = "forward" if arch == "bert" else "prefill"
                            calls["onnxruntime"] = {mode: {key: (fn, batch * seq) for key, fn in fns.items()}}
                        for engine, modes in calls.items():
                            for mode, fns in modes.items():
                                rows += _time_variants(engine, arch, mode, fns, variants, spec, batch, seq, device,
                                                       dtype if engine == "pytorch" else torch.float32, env,
                                                       dict(max_rounds=max_rounds, round_s=round_s))
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _ort_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnxscript", "onnx"))


def _time_variants(engine, arch, mode, fns, variants, spec, batch, seq, device, dtype, env, settings) -> list:
    """Rows of one (engine, arch, mode, shape): every compacted variant timed against the dense model."""
    dense_fn, tokens = fns[("dense", 0.0)]
    dense_flops = count_flops(spec, seq)
    rows, dense_samples = [], []
    prefix = "" if engine == "pytorch" else "onnxruntime-"
    common = dict(op=arch, shape=f"{batch}x{seq}", dtype=str(dtype).split(".")[-1], mode=mode, engine=engine,
                  batch=batch, seq=seq)
    for label, sparsity, rnd, model in variants[1:]:
        units = adapter_for(model).units()
        flops_reduction = dense_flops / count_flops(spec, seq, units.hidden, units.heads, units.ffn)
        result = compare(dense_fn, fns[(label, sparsity)][0], device=device, **settings)
        dense_samples.append(result["dense"][0])
        median = result["compact"][0]
        speedup = result["speedup"]
        rows.append(dict(**env, **common, impl=prefix + label, **timing(*result["compact"]), sparsity=sparsity,
                         round_to=rnd, tokens_per_s=f"{tokens / median * 1e3:.0f}", speedup=f"{speedup:.2f}",
                         flops_reduction=f"{flops_reduction:.2f}",
                         speedup_over_flops=f"{speedup / flops_reduction:.2f}",
                         speedup_p20=f"{result['speedup_p20']:.2f}", speedup_p80=f"{result['speedup_p80']:.2f}",
                         cpu_speedup=f"{result['cpu_speedup']:.2f}", dense_ms=f"{result['dense'][0]:.4f}",
                         rounds=result["rounds"], repeats=result["repeats"],
                         converged="yes" if result["converged"] else "no", agreement=f"{result['agreement']:.3f}"))
        print(f"{engine:<11} {arch:<6} {label:<15} s={sparsity:<4} {mode:<8} b={batch:<3} s={seq:<4} "
              f"{median:9.3f} ms  {speedup:5.2f}x dense [{result['speedup_p20']:.2f}-{result['speedup_p80']:.2f}] "
              f"(FLOPs {flops_reduction:5.2f}x, ratio {speedup / flops_reduction:4.2f}; "
              f"cpu-time {result['cpu_speedup']:.2f}x; {result['rounds']} rounds"
              f"{'' if result['converged'] else ', NOT converged'})")
    # the dense row: its median over the comparisons (each compared it with one compacted model)
    med = statistics.median(dense_samples)
    rows.insert(0, dict(**env, **common, impl=prefix + "dense", **timing(*_quantiles(dense_samples)),
                        sparsity=0.0, round_to=1, tokens_per_s=f"{tokens / med * 1e3:.0f}", speedup="1.00",
                        flops_reduction="1.00", speedup_over_flops="1.00", dense_ms=f"{med:.4f}"))
    return rows


def markdown(rows: list[dict]) -> str:
    """A table of speedup against FLOPs reduction per (arch, sparsity, variant), one column per engine and mode."""
    if not rows:
        return ""
    first = rows[0]
    columns = list(dict.fromkeys((r["engine"], r["mode"]) for r in rows))
    lines = [f"# Compacted vs dense latency ({first['device']}: {first.get('cpu', '')}; {first.get('threads', '')} "
             f"thread(s) per engine; torch {first['torch']}, sha {first['sha']})", "",
             f"Run started {first.get('started', '?')} with a 1-minute load average of {first.get('load_avg', '?')} "
             "(other jobs on the machine).", "",
             "Speedup: dense time / compacted time in the same engine, median over pairs of adjacent calls "
             "(alternating, ABBA), [p20-p80] over those pairs; * = the last two rounds did not agree within 10% "
             "(not converged). The dense row gives the dense model's median ms.", ""]
    for arch in dict.fromkeys(r["op"] for r in rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == arch):
            sub = [r for r in rows if r["op"] == arch and r["shape"] == shape]
            cols = [c for c in columns if any((r["engine"], r["mode"]) == c for r in sub)]
            dense = {c: next(r for r in sub if (r["engine"], r["mode"]) == c and r["impl"].endswith("dense"))
                     for c in cols}
            lines += [f"## {arch}, batch x seq {shape}, {sub[0]['dtype']}", "",
                      "| sparsity | variant | FLOPs reduction | " +
                      " | ".join(f"{e} {m} speedup" for e, m in cols) + " |",
                      "|---|---|---|" + "---|" * len(cols),
                      "| 0 | dense (median ms) | 1.00 | " +
                      " | ".join(f"{float(dense[c]['median_ms']):.2f} ms" for c in cols) + " |"]
            keys = dict.fromkeys((r["sparsity"], r["impl"].replace("onnxruntime-", "")) for r in sub
                                 if not r["impl"].endswith("dense"))
            for sparsity, impl in keys:
                cells, flops = [], ""
                for engine, mode in cols:
                    match = [r for r in sub if (r["engine"], r["mode"]) == (engine, mode) and r["sparsity"] == sparsity
                             and r["impl"].replace("onnxruntime-", "") == impl]
                    if not match:
                        cells.append("")
                        continue
                    r = match[0]
                    flops = r["flops_reduction"]
                    cells.append(f"{r['speedup']}x [{r['speedup_p20']}-{r['speedup_p80']}]"
                                 f"{'' if r['converged'] == 'yes' else ' *'}")
                lines.append(f"| {sparsity} | {impl} | {flops}x | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--batch", nargs="+", type=int, default=None)
    parser.add_argument("--seq", nargs="+", type=int, default=None)
    parser.add_argument("--round-to", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--engines", nargs="+", default=None, choices=["pytorch", "onnxruntime"],
                        help="default: both on CPU when onnxruntime and onnxscript are installed, else pytorch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each engine (default 1 on CPU)")
    parser.add_argument("--max-rounds", type=int, default=None,
                        help="timing rounds at most (default 6; 2 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiniest CPU batch and sequence")
    parser.add_argument("--csv", type=Path, default=RESULTS, help="CSV the rows are appended to")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table of this run's speedups (printed anyway) to this file")
    args = parser.parse_args(argv)
    device = default_device()
    engines = args.engines
    if engines is None and device != "cuda" and _ort_available():
        engines = ["pytorch", "onnxruntime"]  # the script's own runs compare both engines, --smoke included
    rows = run(device, args.smoke, args.arch, args.sparsities, args.batch, args.seq, args.round_to, args.dtype,
               engines, args.threads, args.max_rounds)
    append_rows(args.csv, rows)
    table = markdown(rows)
    print(table)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
        print(f"wrote {args.markdown}")
    return rows


if __name__ == "__main__":
    main()
