"""Durable progress files (backfill segments, continuous-verification passes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, doc: Any) -> None:
    """Replace `path` with `doc` as JSON so that a crash leaves either the old file or the new
    one, never a torn one: written to a sibling, flushed to disk, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
