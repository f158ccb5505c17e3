"""Files on disk: atomic writes, canonical JSON and content keys.

Every file Model Atlas writes goes through `atomic_write_bytes`: the bytes land in a temporary file
in the same directory, are flushed to disk (all but the compute stage's artifacts, which every
reader checks instead: see `durable`), and then replace the target with `os.replace`, so a build
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import orjson


def canonical_json(obj: Any, *, indent: int | None = None) -> str:
    """JSON with sorted keys and no trailing spaces: the same object always gives the same bytes."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=separators,
                      indent=indent, allow_nan=False)


def artifact_json(obj: Any) -> bytes:
    """The compute stage's JSON: sorted keys, UTF-8, one line and a newline, like `canonical_json`,
    but numpy arrays (C-contiguous) are written as they are, each value formatted in C, and NaN
    becomes null. Deterministic too; floats are written in their shortest form (`0.00001` where
    `canonical_json` writes `1e-05`)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
                        | orjson.OPT_APPEND_NEWLINE)


def gzip_text(text: str, level: int = 6) -> bytes:
    """`text` in UTF-8 as a gzip stream without a time stamp: the same text, the same bytes (the
    OV artifact, the tokenizer copy, the site's per-head files)."""
    return gzip.compress(text.encode("utf-8"), compresslevel=level, mtime=0)


def content_key(*parts: Any) -> str:
    """SHA-256 of the canonical JSON of `parts`: the identity of a unit of work."""
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()


# A Hugging Face model id, `name` or `owner/name` (the hub's own limits on characters and length).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def is_hub_id(model: str) -> bool:
    return HUB_ID_RE.fullmatch(model) is not None and ".." not in model  # fullmatch: no "\n"


def model_slug(model: str, local_dir: bool) -> str:
    """File-system and URL name of `--model model`: a local checkpoint directory by its own name
    (`/data/ck/gpt2-random` -> `gpt2-random`), a hub id whole (`Qwen/Qwen2.5-0.5B` ->
    `qwen-qwen2.5-0.5b`). Compute knows which `model` is; render uses `render_slug`."""
    name = model.rstrip("/").split("/")[-1] if local_dir else model
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def render_slug(model: str, artifacts_dir: Path) -> str:
    """The slug compute gave `--model model`, found without its checkpoint: render may run on a
    machine that never had the directory (a CI render job gathering GPU jobs' artifacts), so
    whether `model` exists here must not decide it.

    A path that cannot be a hub id (`/data/ck/gpt2-random`, `./ck`, `a/b/c`) was a directory;
    a name without a slash has one slug either way. Only `owner/name` reads both ways (a hub id,
    or a relative directory `ck/gpt2-random`): the artifacts say which compute wrote, and the
    local directory decides only if both or neither are there.
    """
    as_dir = model_slug(model, local_dir=True)
    if not is_hub_id(model):
        return as_dir
    as_hub = model_slug(model, local_dir=False)
    if as_dir == as_hub:
        return as_hub
    found = [s for s in (as_dir, as_hub) if (artifacts_dir / s).is_dir()]
    if len(found) == 1:
        return found[0]
    return as_dir if Path(model).is_dir() else as_hub


def sha256_bytes(*parts: bytes | memoryview) -> str:
    """SHA-256 (hex) of the concatenation of `parts`."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_TEMPORARIES = itertools.count()  # names of temporary files, unique within the process


def atomic_write_bytes(path: Path | str, data: Any, *, durable: bool = True) -> None:
    """Write `data` (a bytes-like object, or a tuple of them written one after the other) to
    `path` atomically: a temporary file in the same directory (`.<name>.<pid>.<n>.tmp`, created
    exclusively), renamed over the target.

    `durable=False` skips the fsync before the rename. A killed process still leaves the old file
    or the new one (the rename is atomic either way); only a power loss can leave a renamed file
    whose data never reached the disk. The compute stage's artifacts take that: every reader
    checks them (the JSON parsed and validated, the attention file against the size and SHA-256
    the JSON records), and `model-atlas compute` recomputes whatever fails, so a torn artifact
    costs a recompute, never a wrong page. fsync was two thirds of the host time per artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TEMPORARIES)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:  # left by an earlier process with this pid: take the next name
            continue
    try:
        try:
            os.fchmod(fd, 0o644)                 # whatever the umask: the site is published
            for part in data if isinstance(data, tuple) else (data,):
                view = memoryview(part).cast("B")
                while view:
                    view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # os.write names no file
            e.filename = str(path)
        raise


def atomic_write_text(path: Path | str, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE, macOS renamex_np
    RENAME_SWAP); False where the system or the file system cannot."""
    import ctypes
    import errno
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    src, dst = os.fsencode(a), os.fsencode(b)
    if (renameat2 := getattr(libc, "renameat2", None)) is not None:
        at_fdcwd, rename_exchange = -100, 2
        result = renameat2(at_fdcwd, src, at_fdcwd, dst, rename_exchange)
    elif (renamex_np := getattr(libc, "renamex_np", None)) is not None:
        rename_swap = 2
        result = renamex_np(src, dst, rename_swap)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` in the place of `target` (a directory or nothing) in one step, and
    delete the old one: a reader of `target` finds the old tree or the new one, whole, never
    neither. `new` must be on the file system of `target` (a sibling).

    Where the system cannot swap two entries in one step (not Linux or macOS, or a file system
    without RENAME_EXCHANGE), the old tree is renamed away and the new one in: two renames,
    between which `target` does not exist for a moment (microseconds); never a half-written tree.
    """
    if not target.exists():
        os.rename(new, target)
        return
    if not _exchange(new, target):
        old = new.with_name(new.name + ".old")
        os.rename(target, old)
        os.rename(new, target)
        new = old
    shutil.rmtree(new, ignore_errors=True)  # the old tree, now under the name `new` had


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by a killed build (they never replaced a real file)."""
    count = 0
    if root.is_dir():
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
    return count
