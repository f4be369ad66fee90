"""Reading a local data table (.csv, .jsonl, .json) into rows that remember where they came from, so that every
problem is reported with the file, the row and the line."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and, where it applies, the row and column."""


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataFileError(f"--data: cannot read {path}: {err.strerror or err}") from None
    if not raw.strip():
        raise DataFileError(f"--data: {path} is empty ({len(raw)} bytes); expected a header or records with a "
                            "`text` column (and `label` for classification)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataFileError(f"--data: {path} line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                            f"{err.start}); save the file as UTF-8") from None


def read_rows(path: str | Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """Column names and ``(where, row)`` pairs of a local table; ``where`` reads "row 3 (line 4)" for CSV and
    "line 4" for JSON lines. Raises :class:`DataFileError` for an empty, non-UTF-8 or malformed file."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataFileError(f"--data: expected a .csv, .jsonl or .json file, got {path.name}")
    text = _decode(path)
    if fmt == "csv":
        return _csv_rows(path, text)
    if fmt == "json":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # not one JSON document: JSON lines
        except RecursionError:
            raise DataFileError(f"--data: {path} nests too deeply to be a table") from None
        if isinstance(whole, list):
            return _record_rows(path, [(f"item {i}", v) for i, v in enumerate(whole, 1)])
        if whole is not None and not isinstance(whole, dict):
            raise DataFileError(f"--data: {path} holds a JSON {type(whole).__name__}; expected a list of objects or "
                                "one object per line")
    return _record_rows(path, _json_lines(path, text))


def _csv_rows(path: Path, text: str) -> tuple[list[str], list[tuple[str, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = [name.strip() for name in next(reader)]
        if len(set(header)) != len(header):
            raise DataFileError(f"--data: {path} line 1: repeated column names in the header {header}")
        for record in reader:
            if not any(field.strip() for field in record):
                continue  # a blank line
            where = f"row {len(rows) + 1} (line {reader.line_num})"
            if len(record) != len(header):
                raise DataFileError(f"--data: {path} {where}: {len(record)} fields, the header has {len(header)} "
                                    "(an unquoted comma or quote in a text?)")
            rows.append((where, dict(zip(header, record))))
    except csv.Error as err:
        raise DataFileError(f"--data: {path} line {reader.line_num}: not valid CSV: {err}") from None
    if not rows:
        raise DataFileError(f"--data: {path} has a header ({', '.join(header)}) but no data rows")
    return header, rows


def _json_lines(path: Path, text: str) -> list[tuple[str, object]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except ValueError as err:
            raise DataFileError(f"--data: {path} line {number}: not valid JSON: {err}") from None
        except RecursionError:
            raise DataFileError(f"--data: {path} line {number}: nests too deeply to be a record") from None
    return records


def _record_rows(path: Path, records: list[tuple[str, object]]) -> tuple[list[str], list[tuple[str, dict]]]:
    columns: dict[str, None] = {}
    for where, record in records:
        if not isinstance(record, dict):
            raise DataFileError(f"--data: {path} {where}: expected a JSON object with a `text` field, got "
                                f"{type(record).__name__}")
        columns.update(dict.fromkeys(record))
    if not records:
        raise DataFileError(f"--data: {path} has no records")
    return list(columns), list(records)
