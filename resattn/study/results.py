"""Run results on disk: ``runs/<study>/<run id>/result.json``, written atomically."""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path):
    """A temporary file name next to ``path`` (same suffix) to write to; renamed over ``path`` when the
    block succeeds, removed when it fails. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


def read_result(run_dir: Path) -> dict | None:
    """The run's result, or None if it has none (or an unreadable one, which is then not a result)."""
    path = run_dir / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
