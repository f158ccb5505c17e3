"""MkDocs hooks of the generated site (`site.write_mkdocs_config` names this file in build/mkdocs.yml).

MkDocs copies every file of docs_dir that is not a page into the site, byte by byte. Most of a
build's files are generated data: per-head attention, chart downloads, embed pages, artifact
copies (`layout.BULK_DIRS`), thousands of them. The render stage has just written them into a
fresh docs tree, and nothing edits them in place afterwards (the next render writes a new tree and
swaps it in), so the site can share them: these hooks take them out of MkDocs' copy and hard-link
them into the site after the build, a copy only where the site is on another file system. The
site's bytes are the same either way; a demo build creates 3,600 fewer files (about 0.7 s here).
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

from generator.layout import BULK_DIRS

_bulk: list[tuple[str, str]] = []     # (source path, path inside the site) of this build


def on_files(files: Any, config: Any) -> Any:
    _bulk.clear()
    for f in list(files):
        if f.src_uri.startswith(BULK_DIRS) and not f.is_documentation_page():
            files.remove(f)
            _bulk.append((f.abs_src_path, f.dest_uri))
    return files


def on_post_build(config: Any) -> None:
    site = config["site_dir"]
    made: set[str] = set()
    for src, rel in _bulk:
        dest = os.path.join(site, rel)
        parent = os.path.dirname(dest)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        try:
            os.link(src, dest)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(src, dest)
    _bulk.clear()
