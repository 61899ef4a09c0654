"""An on-disk cache of judge verdicts, one JSON file per request, so a rerun costs nothing.

    cache = VerdictCache("runs/judge-cache")
    key = request_key({"base_url": ..., "model": ..., "messages": ..., "max_tokens": 1, ...})
    cache.get(key)          # the stored dict, or None (absent or unreadable)
    cache.put(key, value)   # written atomically: a temporary file, then a rename

The key is the sha256 of the request as canonical JSON (sorted keys), so any change to the
URL, the model, the messages or a parameter is another entry; credentials are never part of
it. An entry that does not parse is treated as absent, and the next `put` replaces it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from alignlab.fileio import atomic_write_text


def request_key(request: dict[str, Any]) -> str:
    """sha256 hex digest of `request` as canonical JSON."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class VerdictCache:
    """Files `folder/<key[:2]>/<key>.json` (module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, unreadable, torn or not JSON: ask again
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_text(self.path(key), json.dumps(value, sort_keys=True))
