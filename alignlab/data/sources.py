"""Read records from JSONL / JSON / Parquet files, `datasets` folders or the hub.

Every record remembers where it came from (`Record.where()` is `path:line`) so that a bad
record can be named precisely. JSONL is parsed here line by line: a malformed line is an
error naming that line, or with on_bad_example="skip" a counted skip.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
JSON_SUFFIXES = (".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES + (".csv", ".txt", ".gz")


def load_records(
    path: str,
    split: str = "train",
    max_records: int = 0,
    *,
    on_bad_example: str = "error",
    report: DataReport | None = None,
) -> list[Record]:
    """Records from a local file, a folder saved by `datasets`, or a hub dataset id.

    `split` picks the split of a saved DatasetDict, of a JSON object {split: [...]}, of a folder
    holding `{split}.jsonl|json|parquet`, or of a hub dataset. `max_records` > 0 reads only the
    first records. Malformed JSONL lines (and non-object records) raise a `DataError`, or with
    on_bad_example="skip" are counted in `report` (which also counts them in `report.records`).
    """
    if on_bad_example not in ("error", "skip"):
        raise ValueError(f"on_bad_example must be 'error' or 'skip', got {on_bad_example!r}")
    source = str(path)
    local = Path(source).expanduser()
    reader = _Reader(source, max_records, on_bad_example, report)
    if local.is_dir():
        return _load_folder(local, source, split, reader)
    if local.is_file():
        return _load_file(local, reader, split)
    if looks_local(source):
        raise DataError("no such file or folder", source)
    return _load_hub(source, split, max_records)


class _Reader:
    """Collects records for one source, handling bad ones per on_bad_example."""

    def __init__(
        self, source: str, max_records: int, on_bad_example: str, report: DataReport | None
    ) -> None:
        self.source = source
        self.max_records = max_records
        self.on_bad_example = on_bad_example
        self.report = report if report is not None else DataReport()
        self.records: list[Record] = []
        self.seen = 0

    @property
    def full(self) -> bool:
        return bool(self.max_records) and self.seen >= self.max_records

    def add(self, value: Any, line: int) -> None:
        self.seen += 1
        if not isinstance(value, dict):
            kind = "array" if isinstance(value, list) else type(value).__name__
            self.bad(f"expected a JSON object (one record), got {kind}", line, "not a JSON object")
            return
        self.records.append(Record(value, self.source, line))

    def bad(self, message: str, line: int | None, reason: str) -> None:
        error = DataError(message, self.source, line, reason=reason)
        if self.on_bad_example == "error":
            raise error
        self.report.records += 1  # parse_examples counts only the records that loaded
        self.report.skip(reason, f"{self.source}:{line}", str(error))


def looks_local(path: str) -> bool:
    """Whether `path` can only be a local file or folder (a data suffix, or a path prefix),
    not a hub dataset id."""
    lowered = path.lower()
    return (
        lowered.endswith(_DATA_SUFFIXES)
        or path.startswith(("/", "./", "../", "~", "\\"))
        or (len(path) > 1 and path[1] == ":")  # C:\...
    )


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _load_file(path: Path, reader: _Reader, split: str) -> list[Record]:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return _load_jsonl(path, reader)
    if name.endswith(JSON_SUFFIXES):
        return _load_json(path, reader, split)
    if name.endswith(PARQUET_SUFFIXES):
        return _load_parquet(path, reader)
    raise DataError(
        "unsupported file type; use .jsonl, .json or .parquet, or a folder saved by "
        "datasets.save_to_disk",
        reader.source,
    )


def _load_jsonl(path: Path, reader: _Reader) -> list[Record]:
    with _open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                if reader.full:
                    break
                reader.seen += 1
                reader.bad(f"not valid UTF-8 ({err.reason})", number, "not UTF-8")
                continue
            if not line.strip():
                continue
            if reader.full:
                break
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                reader.seen += 1
                reader.bad(
                    f"malformed JSON: {err.msg} (column {err.colno})", number, "malformed JSON"
                )
                continue
            reader.add(value, number)
    return reader.records


def _load_json(path: Path, reader: _Reader, split: str) -> list[Record]:
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"not valid UTF-8 ({err.reason})", reader.source) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON Lines in a .json file
            return _load_jsonl(path, reader)
        raise DataError(
            f"malformed JSON: {err.msg} (column {err.colno})", reader.source, err.lineno
        ) from None
    if isinstance(value, dict):
        for key in (split, "data"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            raise DataError(
                f"expected a list of records or an object with a '{split}' or 'data' list; "
                f"found keys {sorted(value)[:10]}",
                reader.source,
            )
    if not isinstance(value, list):
        raise DataError(f"expected a list of records, got {type(value).__name__}", reader.source)
    for index, item in enumerate(value, 1):
        if reader.full:
            break
        reader.add(item, index)
    return reader.records


def _load_parquet(path: Path, reader: _Reader) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"cannot read Parquet: {err}", reader.source) from err
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            if reader.full:
                return reader.records
            index += 1
            reader.add(row, index)
    return reader.records


def _load_folder(path: Path, source: str, split: str, reader: _Reader) -> list[Record]:
    if any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        import datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(
                    f"split {split!r} not found; the saved DatasetDict has "
                    f"{', '.join(sorted(dataset))} (set data.split)",
                    source,
                )
            dataset = dataset[split]
        return _records_from_dataset(dataset, source, reader.max_records)
    for suffix in JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES:
        candidate = path / f"{split}{suffix}"
        if candidate.is_file():
            reader.source = str(Path(source) / candidate.name)
            return _load_file(candidate, reader, split)
    raise DataError(
        f"not a folder saved by datasets.save_to_disk (no dataset_dict.json or state.json) "
        f"and no {split}.jsonl / {split}.json / {split}.parquet in it",
        source,
    )


def _records_from_dataset(dataset: Any, source: str, max_records: int) -> list[Record]:
    if max_records and len(dataset) > max_records:
        dataset = dataset.select(range(max_records))
    return [Record(dict(row), source, index) for index, row in enumerate(dataset, 1)]


def _load_hub(name: str, split: str, max_records: int) -> list[Record]:
    """A hub dataset id: a thin call to `datasets.load_dataset(name, split=split)`."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, auth, unknown id, unknown split: all reported alike
        raise DataError(
            f"not a local file or folder, and loading it as a hub dataset (split {split!r}) "
            f"failed: {type(err).__name__}: {err}",
            name,
        ) from err
    return _records_from_dataset(dataset, name, max_records)
