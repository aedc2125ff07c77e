"""Durable, atomic file writes and timestamps for annotation sessions (no ``slicer``)."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with microseconds (e.g. ``2026-11-24T10:31:02.123456+00:00``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_text_atomic_durable(path: str, text: str) -> str:
    """Write ``text`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The text goes to ``path + '.partial'``, is flushed and fsync'ed, then renamed over ``path`` (``os.replace`` is
    atomic on POSIX and Windows); the folder is fsync'ed where the platform allows it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".partial"
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic
            pass
    return path


def write_json_atomic_durable(path: str, obj) -> str:
    """JSON version of :func:`write_text_atomic_durable` (numpy scalars and arrays allowed)."""
    return write_text_atomic_durable(path, json.dumps(obj, indent=2, default=_default) + "\n")
