"""Atomic writes: a reader (or a resumed run) never sees a half-written file or folder.

Temporary files and folders are created private (mkstemp / mkdtemp: 0600 / 0700); before they
are renamed into place they, and everything written inside a folder, get the permissions a plain
`open` / `mkdir` gives under the process umask (0644 / 0755 usually), so a saved model or report
is as readable as any other file the user writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to `target`.

    If the body raises (or the process dies) the temporary folder is removed or left as a
    hidden `.name.*` sibling, and `target` keeps its previous content.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _open_up(tmp, current_umask())
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} already exists")
            # rename the old one away first: os.replace cannot replace a non-empty folder
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_up(folder: Path, umask: int) -> None:
    """Give `folder` and everything in it the permissions of a plain mkdir / open under
    `umask` (some writers, e.g. transformers' safetensors save, leave 0600 files)."""
    for path in (folder, *folder.rglob("*")):
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it into place."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
