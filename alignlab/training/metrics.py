"""Metrics to `metrics.jsonl` (one JSON object per record) and TensorBoard, from rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError
from alignlab.fileio import atomic_write_text


class MetricsLogger:
    """Append-only JSONL metrics plus optional TensorBoard scalars.

    On resume, records written after the checkpoint's step by the interrupted run are dropped,
    so the file reads as one uninterrupted run (and a last line torn by a kill mid-write).
    """

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                json.dumps(record) + "\n"
                for record in read_metrics(self.path)
                if record.get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(Path(output_dir) / "tensorboard"), purge_step=resume_step
            )

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file (or of the one in a run folder). A last line that
    is not valid JSON was torn by a kill mid-write and is left out; a bad line before it is
    an error naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ConfigError(f"{path}:{number}: not a JSON record ({err.msg})") from err
    return records
