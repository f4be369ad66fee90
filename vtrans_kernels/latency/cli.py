"""``vtrans profile``: measure a model's latency table on this machine (the parser and the command)."""
from __future__ import annotations


def add_profile_parser(sub) -> None:
    """Register the ``profile`` subcommand on an argparse subparsers object."""
    p = sub.add_parser("profile", help="measure per-layer latencies of a model on this device (for --target latency)")
    p.add_argument("--model", required=True, help="transformers model folder (the unpruned model)")
    p.add_argument("--task", choices=("classification", "lm"), default="classification",
                   help="the head the model is loaded with, as `vtrans prune --task` loads it")
    p.add_argument("--out", required=True, help="the table's JSON file (reused when it matches the settings)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward in deployment")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence in deployment")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="deployment dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while measuring (default: torch's setting; 1 times with the thread's CPU time, "
                        "blind to other jobs on a shared machine)")
    p.add_argument("--repeats", type=int, default=7, help="samples per point")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per model first")
    p.add_argument("--ffn-step", type=int, default=8, help="FFN widths measured every K neurons")
    p.add_argument("--hidden-sizes", default=None,
                   help="comma-separated hidden sizes to measure (default: 100%%, 87.5%%, ..., 25%% of the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _hidden_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--hidden-sizes: expected comma-separated ints, got {text!r}") from None


def run_profile(args, load_model) -> int:
    """Run ``vtrans profile``: ``load_model(path, task)`` returns the model as the prune command loads it."""
    from pathlib import Path

    import torch

    from .profile import profile_latency

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    if Path(args.out).is_dir():
        raise ValueError(f"--out: {args.out} is a folder; expected the table's .json file")
    model = load_model(args.model, args.task)
    table = profile_latency(model, batch_size=args.batch_size, seq_len=args.seq_len, dtype=dtype, device=device,
                            threads=args.threads, repeats=args.repeats, warmup=args.warmup, ffn_step=args.ffn_step,
                            hidden_sizes=_hidden_sizes(args.hidden_sizes), path=args.out,
                            progress=not args.no_progress)
    full = table.hidden_sizes[-1]
    print(f"device: {table.device['type']} {table.device['name']!r}; {table.dtype}, batch {table.batch_size} x "
          f"seq {table.seq_len}; clock {table.settings['clock']}")
    print(f"hidden sizes: {table.hidden_sizes}; head counts 0..{table.attention[full]['widths'][-1]}; FFN widths "
          f"0..{table.ffn[full]['widths'][-1]} every {table.settings['ffn_step']}")
    print(f"unpruned model: {table.measured_total_ms(full):.3f} ms measured; fixed cost "
          f"{table.fixed_ms()[full]:.3f} ms; measured in {table.profile_seconds:.0f} s")
    print(f"wrote {args.out} (use with: vtrans prune --target latency --target-speedup 2.0 --profile {args.out})")
    return 0
