"""Files on disk: atomic writes, canonical JSON and content keys.

Every file Model Atlas writes goes through `atomic_write_bytes`: the bytes land in a temporary file
in the same directory, are flushed to disk (all but the compute stage's artifacts, which every
reader checks instead: see `durable`), and then replace the target with `os.replace`, so a build
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def canonical_json(obj: Any, *, indent: int | None = None) -> str:
    """JSON with sorted keys and no trailing spaces: the same object always gives the same bytes."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=separators,
                      indent=indent, allow_nan=False)


def content_key(*parts: Any) -> str:
    """SHA-256 of the canonical JSON of `parts`: the identity of a unit of work."""
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()


def slugify(model_id: str) -> str:
    """File-system and URL name of a model: a local directory by its name, a hub id whole."""
    name = model_id.rstrip("/").split("/")[-1] if Path(model_id).exists() else model_id
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    """Write `data` (any bytes-like object) to `path` atomically: a temporary file in the same
    directory, renamed over the target.

    `durable=False` skips the fsync before the rename. A killed process still leaves the old file
    or the new one (the rename is atomic either way); only a power loss can leave a renamed file
    whose data never reached the disk. The compute stage's artifacts take that: every reader
    checks them (the JSON parsed and validated, the attention file against the size and SHA-256
    the JSON records), and `model-atlas compute` recomputes whatever fails, so a torn artifact
    costs a recompute, never a wrong page. fsync was two thirds of the host time per artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = None,
                      durable: bool = True) -> None:
    atomic_write_text(path, canonical_json(obj, indent=indent) + "\n", durable=durable)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by a killed build (they never replaced a real file)."""
    count = 0
    if root.is_dir():
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
    return count
