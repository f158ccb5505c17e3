"""Tokenize your own text: every tokenizer of the build, live in the page, offline (no torch).

The compute stage saves the tokenizer it used for a model as a Hugging Face `tokenizer.json` beside
the model's artifacts (`save_tokenizer`): the serialization of the very backend that made the
artifacts' token ids, so a hub model's own `tokenizer.json` and the demo's GPT-2 (shipped as
vocab.json + merges.txt) come out the same way, deterministically. Render copies each into the
site (`layout.tokenizer_file`) together with the vendored @huggingface/tokenizers (`LIBRARY`, an ES
module pinned by version and SHA-256, its licence beside it), and writes the page and its embed
page. Only those two pages fetch the tokenizers: `site_src/assets/tokenize.js` starts one worker per
model (`tokenize-worker.js`), which imports the library and fetches its model's file when the page
opens. tests/test_tokenize.py checks that the browser's ids equal transformers' on 5,000 strings.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import layout
from .errors import ArtifactError, AtlasError

VENDOR_DIR = Path(__file__).parent / "assets" / "vendor"
# The longest text the page tokenizes (characters); longer text is cut with a message. At 20,000
# characters a keystroke re-tokenizes in well under a second, and the chips stay a readable page.
MAX_CHARS = 20_000
# What the text box holds when the address has no ?text=: a language, emoji and a line of code,
# where the tokenizers of GPT-2 and Qwen2.5 differ most.
DEFAULT_TEXT = ("नमस्ते दुनिया, 巴黎 and 👨‍👩‍👧‍👦\n"
                "def greet(name):\n    return f\"Hello, {name}!\"  # 2024")


@dataclass(frozen=True)
class Vendored:
    """A file taken unchanged from an npm package (`npm pack PACKAGE@VERSION`)."""
    package: str
    version: str
    source: str      # its path inside the package tarball
    file: str        # its name in generator/assets/vendor/
    sha256: str      # of the file as the tarball holds it
    licence: str     # the package's licence file, beside it

    @property
    def path(self) -> Path:
        return VENDOR_DIR / self.file

    @property
    def licence_path(self) -> Path:
        return VENDOR_DIR / self.licence


# To update: `npm pack @huggingface/tokenizers@NEW`, copy package/dist/tokenizers.min.mjs and
# package/LICENSE here under the new version's names, and change version, file and sha256 together
# (tests/test_tokenize.py fails until they agree).
LIBRARY = Vendored(package="@huggingface/tokenizers", version="0.2.0",
                   source="package/dist/tokenizers.min.mjs", file="tokenizers-0.2.0.min.mjs",
                   sha256="258e46332101335ce8d95aed7745b19ac3b46d37f3e159a89cf894c2ea9b1d3a",
                   licence="tokenizers-LICENSE")


def checked_library() -> Path:
    """The vendored library's file, after checking that it is the pinned version's."""
    path = LIBRARY.path
    if not path.is_file() or not LIBRARY.licence_path.is_file():
        raise AtlasError(f"{path}: the vendored {LIBRARY.package} {LIBRARY.version} (or its "
                         f"licence) is missing from the package. Reinstall model-atlas.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != LIBRARY.sha256:
        raise AtlasError(f"{path}: SHA-256 {digest} is not that of {LIBRARY.package} "
                         f"{LIBRARY.version} ({LIBRARY.sha256}). Restore the file from "
                         f"`npm pack {LIBRARY.package}@{LIBRARY.version}` ({LIBRARY.source}).")
    return path


def tokenizer_json(tokenizer: Any) -> str:
    """The `tokenizer.json` of a transformers tokenizer: its fast backend serialized, the same
    text for the same tokenizer (vocabulary in id order, merges in rank order)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise AtlasError(f"{type(tokenizer).__name__}: not a fast (Rust-backed) tokenizer, so it "
                         f"has no tokenizer.json for the browser. Save the model with a fast "
                         f"tokenizer (tokenizer.json) and build again.")
    return backend.to_str()


def save_tokenizer(tokenizer: Any, artifacts_dir: Path, slug: str) -> Path:
    """Write the model's `tokenizer.json`, gzipped, beside its artifacts (unchanged content is
    not rewritten, and the gzip stream carries no time stamp: the same tokenizer, the same bytes)."""
    from .store import atomic_write_bytes, gzip_text
    path = layout.tokenizer_artifact(artifacts_dir, slug)
    text = tokenizer_json(tokenizer)
    if not path.is_file() or read_saved(path) != text:
        # Level 6: 3 % larger than level 9 and four times faster (Qwen2.5's: 0.3 s, not 1.3).
        atomic_write_bytes(path, gzip_text(text, 6))
    return path


def read_saved(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def copy_into_site(copy: Callable[[Path, str], None], write_text: Callable[[str, str], None],
                   artifacts_dir: Path, slugs: Sequence[str]) -> None:
    """The vendored library, its licence and every model's tokenizer, into the docs tree."""
    copy(checked_library(), layout.TOKENIZERS_LIB)
    copy(LIBRARY.licence_path, layout.TOKENIZERS_LICENSE)
    for slug in slugs:
        src = layout.tokenizer_artifact(artifacts_dir, slug)
        if not src.is_file():
            raise ArtifactError(f"{src}: no tokenizer saved for model {slug} (artifacts made "
                                f"before the tokenize page existed). Run `model-atlas compute` "
                                f"(or `build`) again: it saves the tokenizer without recomputing "
                                f"current artifacts.")
        write_text(layout.tokenizer_file(slug), read_saved(src))


def page_context(models: Sequence[Any], urls: layout.Urls) -> dict[str, Any]:
    """What the page and its embed give the page script (by data attributes)."""
    return {"tokenize": {
        "max_chars": MAX_CHARS, "library": urls.to(layout.TOKENIZERS_LIB),
        "licence": urls.to(layout.TOKENIZERS_LICENSE), "worker": urls.to(layout.TOKENIZE_WORKER),
        "script": urls.to(layout.TOKENIZE_SCRIPT), "stylesheet": urls.to(layout.STYLESHEET),
        "tokenize_css": urls.to(layout.TOKENIZE_STYLESHEET),
        "package": LIBRARY.package, "version": LIBRARY.version, "default_text": DEFAULT_TEXT,
        "columns": [{"slug": m.slug, "name": m.model_id, "url": urls.tokenizer_file(m.slug)}
                    for m in models]}}
