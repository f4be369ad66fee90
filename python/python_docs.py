"""The Python 3.11 documentation as an offline English corpus: the reST sources that Debian's ``python3.11-doc``
package installs (497 documents, about 11M characters: tutorial, library reference, language reference,
HOWTOs), read as raw reST text, one document per file."""
import sys
from pathlib import Path

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
INSTALL = f"apt-get install -y python3.11-doc   (Debian/Ubuntu; puts the reST sources under {SOURCES})"


def source_folder(folder: Path = SOURCES) -> Path:
    """The folder of the reST sources; exits with the install command when the package is missing."""
    if not available(folder):
        sys.exit(f"needs the Python documentation sources, not found under {folder}; install them with:\n"
                 f"    {INSTALL}")
    return folder


def available(folder: Path = SOURCES) -> bool:
    """Whether the corpus is installed (for tests that skip without it)."""
    return folder.is_dir() and any(folder.rglob("*.rst.txt"))


def documents(limit: int | None = None, folder: Path = SOURCES) -> list[str]:
    """The text of every document, in sorted path order (so the list is the same on every machine with the same
    package version); the first ``limit`` only when given."""
    paths = sorted(source_folder(folder).rglob("*.rst.txt"))[:limit]
    return [path.read_text(encoding="utf-8", errors="replace") for path in paths]
