"""Paired comparison of two sets of encoder-study cells on the same rows (the per-row records of row_records.py).

A 3-seed mean of one method against another's differs by the methods and by which rows each happened to get
right; on a dev split of 845 rows one cell's accuracy has a binomial standard error near 1.3 points. Pairing the
two methods' results row by row (same seed, same split) removes the rows both get right or both get wrong, so the
question "is A better than B" gets an interval instead of two overlapping means.

    python bench/quality/paired.py --csv bench/results/quality/encoder_sentiment_settled.csv \\
        --a method=vtrans target_sparsity=0.5 "structures=heads ffn" quench_fraction=0.2 \\
        --b method=hard_concrete target_sparsity=0.5 "structures=heads ffn"

Each selection is column=value pairs over the cells' key columns (a column left out matches anything); per seed
it must pick exactly one recorded cell. Reported per split: the mean over the paired seeds of accuracy(A) -
accuracy(B) in points, a 95% paired-bootstrap interval (rows resampled within each seed, the same rows for A and
B), the share of resamples where A is not ahead, and the rows only A / only B got right.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from row_records import flags, load_records, records_path  # noqa: E402

SPLITS = ("dev", "test")


def parse_selection(pairs: list[str], option: str) -> dict[str, str]:
    """``["column=value", ...]`` as a dict; a pair without "=" is an error naming ``option``."""
    out = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise ValueError(f"{option}: expected column=value pairs, got {pair!r}")
        out[column] = value
    return out


def by_seed(records: list[dict], selection: dict[str, str], option: str) -> dict[str, dict]:
    """The records matching ``selection``, by seed; two matches for one seed is an error naming the columns
    that tell them apart."""
    out: dict[str, dict] = {}
    for record in records:
        cell = record["cell"]
        if all(cell.get(k, "") == v for k, v in selection.items()):
            seed = cell["seed"]
            if seed in out:
                differ = sorted(k for k in cell if cell[k] != out[seed]["cell"].get(k))
                raise ValueError(f"{option}: seed {seed} matches more than one cell; add one of {differ} to the "
                                 "selection")
            out[seed] = record
    return out


def compare(a: dict[str, dict], b: dict[str, dict], split: str, *, resamples: int = 10000,
            seed: int = 0) -> dict:
    """A against B on ``split`` over their common seeds: ``diff`` (points, mean over seeds of the accuracy
    difference), ``low`` / ``high`` (95% paired-bootstrap interval), ``not_ahead`` (share of resamples with A - B
    <= 0), ``only_a`` / ``only_b`` (rows only one got right, summed over seeds) and ``seeds``."""
    seeds = sorted(set(a) & set(b), key=int)
    if not seeds:
        raise ValueError(f"no seed has a recorded cell in both selections (A: {sorted(a)}, B: {sorted(b)})")
    gen = torch.Generator().manual_seed(seed)
    diffs, boots, only_a, only_b = [], torch.zeros(resamples, dtype=torch.float64), 0, 0
    for s in seeds:
        fa, fb = flags(a[s], split), flags(b[s], split)
        if fa.numel() != fb.numel() or fa.numel() == 0:
            raise ValueError(f"seed {s}: the {split} records have {fa.numel()} and {fb.numel()} rows; they must "
                             "cover the same rows")
        delta = fa.double() - fb.double()
        diffs.append(float(delta.mean()))
        index = torch.randint(0, delta.numel(), (resamples, delta.numel()), generator=gen)
        boots += delta[index].mean(dim=1)
        only_a += int((fa & ~fb).sum())
        only_b += int((fb & ~fa).sum())
    boots /= len(seeds)
    low, high = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return dict(diff=100 * sum(diffs) / len(seeds), low=100 * low, high=100 * high,
                not_ahead=float((boots <= 0).double().mean()), only_a=only_a, only_b=only_b, seeds=seeds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True, help="the study's results CSV (its records sit next to it)")
    p.add_argument("--a", nargs="+", required=True, metavar="COLUMN=VALUE")
    p.add_argument("--b", nargs="+", required=True, metavar="COLUMN=VALUE")
    p.add_argument("--resamples", type=int, default=10000)
    args = p.parse_args(argv)
    if args.resamples < 100:
        p.error(f"--resamples: expected at least 100, got {args.resamples}")
    path = records_path(Path(args.csv))
    records = load_records(path)
    if not records:
        p.error(f"--csv: no per-row records at {path} (run the cells, or encoder.py --record-rows)")
    try:
        a = by_seed(records, parse_selection(args.a, "--a"), "--a")
        b = by_seed(records, parse_selection(args.b, "--b"), "--b")
        results = {split: compare(a, b, split, resamples=args.resamples) for split in SPLITS}
    except ValueError as err:
        p.error(str(err))
    print("| split | seeds | A - B (points) | 95% interval | resamples with A not ahead | rows only A / only B right |")
    print("|---|---|---|---|---|---|")
    for split, r in results.items():
        print(f"| {split} | {' '.join(r['seeds'])} | {r['diff']:+.2f} | [{r['low']:+.2f}, {r['high']:+.2f}] "
              f"| {r['not_ahead']:.3f} | {r['only_a']} / {r['only_b']} |")


if __name__ == "__main__":
    main()
