"""Run results on disk: ``runs/<study>/<run id>/result.json``, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(run_dir: Path) -> dict | None:
    """The run's result, or None if it has none (or an unreadable one, which is then not a result)."""
    path = run_dir / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
