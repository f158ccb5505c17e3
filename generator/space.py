"""A full disk: what was being written, where, the free space, and about how much a build needs.

Every file goes through an atomic write (generator/store.py) or into a directory that replaces its
old version only when complete (the demo checkpoints, the docs tree, the site), so a write that
fails for want of space leaves the artifacts and the site as they were. What the user needs then
is one sentence instead of a traceback: `Space.writing` wraps each stage and turns "no space left
on device" (an OSError with errno ENOSPC or EDQUOT, or the text of one from a library that wraps
it: safetensors, mkdocs in its subprocess) into a `DiskFullError` that says it.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import AtlasError

# A demo build with the curated prompt sets, measured (Linux, ext4, December 2026): checkpoints
# 123 MB, artifacts 2.3 MB, docs 19 MB, site 24 MB, Vega bundle 0.9 MB.
DEMO_BUILD_BYTES = 170_000_000
# A first render of other models, from their artifacts: the docs tree and the site each hold the
# artifacts again (copies and per-layer attention files) plus pages and charts; the demo's pages
# and site are 18 times its artifacts, real models' (attention dominates) fewer.
RENDER_PER_ARTIFACT_BYTE = 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull")


class DiskFullError(AtlasError):
    """A write failed because its file system is full."""


def is_disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an exception it was raised from, is "no space left on device"."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        if any(text in str(e) for text in NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _failed_file(e: BaseException | None) -> str | None:
    while e is not None:
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        e = e.__cause__ or e.__context__
    return None


def _within(path: Path, where: Path) -> bool:
    """Whether `path` lies in `where` or in a temporary sibling of it (`docs.tmp`,
    `.site.<pid>.tmp`) that replaces it when complete."""
    path, where = path.absolute(), where.absolute()
    for p in (path, *path.parents):
        if p.parent == where.parent and (p.name == where.name
                                         or p.name.startswith((f"{where.name}.",
                                                               f".{where.name}."))):
            return True
    return False


def tree_bytes(path: Path | None) -> int:
    """Bytes of the files under `path` (symbolic links not followed); 0 if there is none."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the file system of `path` or of its nearest existing parent."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable


class Space:
    """The directories of one command, for the message of a full disk."""

    def __init__(self, build_dir: Path, out: Path | None = None, demo: bool = False):
        self.build_dir, self.out, self.demo = build_dir, out, demo

    def in_use(self) -> int:
        return tree_bytes(self.build_dir) + tree_bytes(self.out)

    def build_needs(self) -> int:
        """About how many bytes a build here takes, in all, at its peak: what is there now, plus
        the new docs tree and site that a render writes beside the old ones before the swap (as
        large as the last ones; a first render: `RENDER_PER_ARTIFACT_BYTE` per artifact byte, or
        the demo's measured size)."""
        docs = tree_bytes(self.build_dir / "docs")
        site = tree_bytes(self.out)
        used = self.in_use()
        if docs or site:
            return used + docs + site
        if self.demo:
            return max(DEMO_BUILD_BYTES, used)
        return used + RENDER_PER_ARTIFACT_BYTE * tree_bytes(self.build_dir / "artifacts")

    def message(self, what: str, where: Path, failed: str | None) -> str:
        need = self.build_needs()
        file = f" in {where}"
        if failed:
            file = f" ({failed})"
            if not _within(Path(failed), where):  # another directory (a download cache)
                what, where = "a file", Path(failed).parent
        more = max(0, need - self.in_use())
        return (f"No space left on device while writing {what}{file}: "
                f"{human(free_bytes(where))} free there, and a build here needs about "
                f"{human(more)} free ({human(need)} in all); free some space or give --build-dir "
                f"and --out on a disk with room, and run the command again (the artifacts and "
                f"the site on disk are whole and unchanged by the failed write; the next build "
                f"resumes from them).")

    @contextmanager
    def writing(self, what: str, where: Path) -> Iterator[None]:
        """Turn a full disk inside the body into `DiskFullError` (`what`: "the artifacts")."""
        try:
            yield
        except DiskFullError:
            raise
        except Exception as e:  # noqa: BLE001 - whichever library wraps the OSError
            if not is_disk_full(e):
                raise
            raise DiskFullError(self.message(what, where, _failed_file(e))) from None
