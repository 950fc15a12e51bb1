"""Atomic file writes: readers see the old file or the new one, never half of one (Ctrl-C, kill, preemption)."""
import json
import os
from pathlib import Path

__all__ = ['write_json_atomic']


def write_json_atomic(obj, path: os.PathLike, indent: int = 2) -> None:
    """Write `obj` as JSON to `path` through a temporary file in the same directory, fsync, then `os.replace`.

    Values JSON cannot hold (paths, dtypes) are written with `str`. The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=indent, default=str)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
