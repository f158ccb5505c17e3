"""The address book of Model Atlas: every file and URL of the generated site, named once.

datasette builds every URL through one class (`url_builder.Urls`); this module is that for Model
Atlas. Render writes each file at the path a function here names; export finds them through the
manifest render writes (`MANIFEST`); templates get a `Urls` bound to the page they render
(`urls.prompt_data(slug, key)`); the page scripts read their URLs from data attributes render
fills in, and spell no path themselves. Changing where a file lives is one edit, here.
`tests/test_layout.py` fails when a path of the site is spelled out anywhere else in `generator/`,
`templates/` or `site_src/`.

Paths are POSIX paths relative to the docs tree, which is also the site root ("docs paths"). Pages
are Markdown files of the docs tree that MkDocs serves as `.html` (`use_directory_urls: false`).
A prompt is named by its key, `<set>/<prompt>` (`Prompt.key`), a model by its slug.

Also here, though outside the site: where the compute stage keeps artifacts (`artifact_path`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def artifact_path(root: Path, slug: str, set_id: str, prompt_id: str) -> Path:
    """`<root>/<slug>/<set>/<prompt>.json` (root: `build/artifacts`); its attention file lies
    beside it (`schema.attention_path`)."""
    return root / slug / set_id / f"{prompt_id}.json"


def skip_record_path(root: Path, slug: str, set_id: str, prompt_id: str) -> Path:
    """`<root>/<slug>/<set>/<prompt>.skipped.json`: where the compute stage says why a model has
    no artifact for a prompt (`skips.SkipRecord`: the prompt is longer than its context)."""
    return root / slug / set_id / f"{prompt_id}.skipped.json"


def tokenizer_artifact(root: Path, slug: str) -> Path:
    """`<root>/<slug>/tokenizer.json.gz`: the tokenizer the compute stage used for the model, saved
    beside its artifacts (gzipped, and so not one of the `*.json` artifacts) so that render, and a
    render job that only downloads the artifacts, can write it into the site (`tokenizer_file`)."""
    return root / slug / "tokenizer.json.gz"


def ov_path(root: Path, slug: str) -> Path:
    """`<root>/<slug>/ov.json.gz` (root: `build/artifacts`): the OV circuits of every head of one
    model (generator/ov.py), beside its prompt artifacts (gzipped, and so not one of the `*.json`
    artifacts, as `tokenizer_artifact`), so that whatever carries the artifacts (a CI cache, a
    sharded build's gathering, a render job that only downloads them) carries it too; every
    shard writes the same one (`ov.prompt_tokens`)."""
    return root / slug / "ov.json.gz"


# --- files every page needs ----------------------------------------------------------------------

MANIFEST = "manifest.json"                     # what render wrote: models, prompts, charts
STYLESHEET = "assets/atlas.css"                # hand-written, from site_src/
CHART_STYLESHEET = "assets/charts.css"         # hand-written: heatmap, thumbnails, chart frames
ATTENTION_CODEC = "assets/attention-codec.js"  # hand-written: the browser's attention decoder
HEATMAP_SCRIPT = "assets/heatmap.js"           # hand-written: a prompt page's attention heatmap
THUMBS_SCRIPT = "assets/thumbs.js"             # hand-written: every head's pattern, small
PAGE_SCRIPT = "assets/atlas.js"                # hand-written: draws the charts of a page
HEADS_SCRIPT = "assets/heads.js"               # hand-written: the model page's scatter of heads
HEADS_STYLESHEET = "assets/heads.css"          # hand-written: head pages and the scatter
EMBED_SCRIPT = "assets/embed.js"               # hand-written: draws the chart of an embed page
VENDOR_BUNDLE = "assets/vendor/vega-bundle.js"  # vega + vega-lite + vega-embed (site.vendor_bundle)
# Scripts of every MkDocs page, in order (the generated mkdocs.yml lists them): the small codec,
# the heatmap and thumbnail scripts, then the page script that calls them. The Vega bundle (900 KB)
# is not among them: a page without a chart (home, sets, reference pages) must not fetch it. The
# page script loads it, on pages that hold a Vega chart, from the URL in the chart elements'
# data-vega attribute (`Urls.vendor_bundle`), together with the first charts' data.
PAGE_SCRIPTS = (ATTENTION_CODEC, HEATMAP_SCRIPT, THUMBS_SCRIPT, PAGE_SCRIPT, HEADS_SCRIPT)
STYLESHEETS = (STYLESHEET, CHART_STYLESHEET, HEADS_STYLESHEET)
# Scripts of an embed page after its chart element (the bundle loads in its head).
EMBED_SCRIPTS = (ATTENTION_CODEC, EMBED_SCRIPT)
# "Tokenize your own text" (generator/tokenize_page.py): only that page and its embed load these.
# The page script starts one worker per tokenizer; each worker imports the vendored tokenizers.js
# (@huggingface/tokenizers, generator/assets/vendor/) and fetches its model's `tokenizer_file`.
TOKENIZE_SCRIPT = "assets/tokenize.js"             # hand-written: the page, its chips and counts
TOKENIZE_WORKER = "assets/tokenize-worker.js"      # hand-written: one tokenizer, off the main thread
TOKENIZE_STYLESHEET = "assets/tokenize.css"        # hand-written: the text box, columns, boundaries
TOKENIZERS_LIB = "assets/vendor/tokenizers.js"     # @huggingface/tokenizers, an ES module
TOKENIZERS_LICENSE = "assets/vendor/tokenizers-LICENSE.txt"

# --- data files that pages fetch -----------------------------------------------------------------

LAYER = "{layer}"  # placeholder in `attention_heads`: the page scripts put a layer number there
HEAD = "{head}"    # placeholder in `attention_heads`: the page scripts put a head number there


def prompt_data(slug: str, key: str) -> str:
    """Tokens and predictions of one model on one prompt."""
    return f"data/{slug}/{key}.json"


def prompt_lens(slug: str, key: str) -> str:
    return f"data/{slug}/{key}.lens.json"


def prompt_heads(slug: str, key: str) -> str:
    """Head metrics and key/value groups of one model on one prompt."""
    return f"data/{slug}/{key}.heads.json"


def prompt_dla(slug: str, key: str) -> str:
    """Direct logit attribution of one model on one prompt, every position."""
    return f"data/{slug}/{key}.dla.json"


def attention_heads(slug: str, key: str) -> str:
    """The per-head attention files of one model on one prompt, `LAYER` and `HEAD` standing for
    the layer and the query head: switching heads fetches only that head's file. Gzipped JSON
    (render.py `_Site.attention_files`), so that a host that compresses nothing still sends it
    compressed; the page scripts read it with `AtlasCodec.fetchHead`."""
    return f"data/{slug}/{key}/L{LAYER}.H{HEAD}.json.gz"


def attention_head(slug: str, key: str, layer: int, head: int) -> str:
    return attention_heads(slug, key).replace(LAYER, str(layer)).replace(HEAD, str(head))


def attention_labels(slug: str, key: str) -> str:
    """The token labels of one model on one prompt, `{labels, prompt_tokens}`: all the heatmap
    needs besides the attention (the prompt's data file also holds every position's predictions:
    1.3 MB at 2,048 tokens, against about 40 kB)."""
    return f"data/{slug}/{key}.labels.json"


def attention_thumbs(slug: str, key: str) -> str:
    """Every head's pattern of one model on one prompt as small max-pooled images
    (generator/overview.py): what "All heads at a glance" fetches instead of the attention."""
    return f"data/{slug}/{key}.thumbs.json"


def compare_data(key: str) -> str:
    """Every model on one prompt (cumulative surprisal)."""
    return f"data/compare/{key}.json"


def prompt_part(key: str, part: str) -> str:
    """A long prompt page's per-position bulk, fetched by the page script when the reader comes
    near it (issue 16): {"html": the markup of that part} ("aligned": the aligned text of the
    comparison, "agreement": every row of its agreement table)."""
    return f"data/compare/{key}.{part}.json"


def tokenizers_data() -> str:
    return "data/compare/tokenizers.json"


def tokenizer_file(slug: str) -> str:
    """One model's tokenizer as the browser loads it: the `tokenizer.json` of the backend that
    made the artifacts' token ids (the compute stage saves it, `tokenizer_artifact`)."""
    return f"data/{slug}/tokenizer.json"


def atlas_data(slug: str) -> str:
    """The head atlas of one model (metrics averaged over prompts)."""
    return f"data/{slug}/atlas.json"


def artifact_copy(slug: str, key: str) -> str:
    """The artifact a prompt page links, copied into the site; its attention file lies beside it
    (`schema.attention_path`)."""
    return f"artifacts/{slug}/{key}.json"


SPEC_SUFFIX = ".vl.json"   # a Vega-Lite spec: chart specs, downloads and `model-atlas export`


def chart_spec(name: str) -> str:
    """The Altair spec of a chart kind, its named datasets empty (generator/charts.py)."""
    return f"charts/{name}{SPEC_SUFFIX}"


# --- charts standing alone: scopes, downloads, embed pages ---------------------------------------
# A chart's scope says what it shows: one model on one prompt, every model on one prompt, one
# model, or the site. `model-atlas export` lays its files out the same way: `<out>/<chart_file>.*`.

SITE_SCOPE = "site"


def prompt_scope(slug: str, key: str) -> str:
    return f"{slug}/{key}"


def compare_scope(key: str) -> str:
    return f"compare/{key}"


def model_scope(slug: str) -> str:
    return slug


def chart_file(scope: str, stem: str) -> str:
    """A chart's path without suffix: under `downloads/`, `embed/` and an export's directory."""
    return f"{scope}/{stem}"


def attention_stem(layer: int, head: int) -> str:
    """The file name of one attention head's chart: layer 0 head 0 is the default."""
    return "attention" if (layer, head) == (0, 0) else f"attention-L{layer}-H{head}"


def download(scope: str, stem: str) -> str:
    """The complete Vega-Lite spec of one chart, data inlined."""
    return f"downloads/{chart_file(scope, stem)}{SPEC_SUFFIX}"


def embed_page(scope: str, stem: str) -> str:
    """The minimal page of one chart, for an <iframe>."""
    return f"embed/{chart_file(scope, stem)}.html"


# The top directories of the generated files that are not pages: thousands in a build, written
# fresh by every render and never edited in place (generator/mkdocs_hooks.py links them into the
# site instead of copying them).
BULK_DIRS = ("data/", "downloads/", "embed/", "artifacts/")


# --- pages ---------------------------------------------------------------------------------------

HOME = "index.md"
TOKENIZERS_PAGE = "compare/tokenizers.md"
ARCHITECTURES_PAGE = "compare/architectures.md"
TOKENIZE_PAGE = "tokenize.md"                  # "Tokenize your own text"
TOKENIZE_EMBED = "embed/tokenize.html"         # the same view alone, for an <iframe>
METRICS_PAGE = "metrics.md"
# The hand-written pages of site_src/, as the navigation's "Reference" lists them.
REFERENCE_PAGES = {"About Model Atlas": "about.md", "Head metrics": METRICS_PAGE,
                   "Artifact format": "artifact-format.md",
                   "Prompt-set format": "prompt-sets.md", "Embedding charts": "embedding.md"}


def prompt_page(key: str) -> str:
    return f"prompts/{key}.md"


def model_page(slug: str) -> str:
    return f"models/{slug}.md"


def set_page(set_id: str) -> str:
    return f"sets/{set_id}.md"


HEAD_PAGES_DIR = "heads/"   # every head page; not in the navigation (mkdocs.yml `not_in_nav`)


def head_pages(slug: str) -> str:
    """The pages of one model's query heads, `LAYER` and `HEAD` standing for the layer and the
    head (the model page's scatter fills them in)."""
    return f"{HEAD_PAGES_DIR}{slug}/L{LAYER}.H{HEAD}.md"


def head_page(slug: str, layer: int, head: int) -> str:
    """The page of one query head of one model (`L2.H1`, as the site names heads)."""
    return head_pages(slug).replace(LAYER, str(layer)).replace(HEAD, str(head))


# --- from a docs path to a URL -------------------------------------------------------------------


def served(path: str) -> str:
    """The URL path MkDocs serves a docs path at: a page's `.md` becomes `.html`."""
    return path[: -len(".md")] + ".html" if path.endswith(".md") else path


def rel_root(at: str) -> str:
    """The relative URL of the site root from the file at docs path `at`."""
    return "../" * at.count("/")


def is_docs_path(path: str) -> bool:
    """Whether `path` names a file inside the docs tree: relative, no `..`, no backslash."""
    p = PurePosixPath(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path


def head_query(slug: str, layer: int, head: int, pos: int | None = None) -> str:
    """The query that opens one model's layer and head on a prompt page (atlas.js reads it, and
    writes it back as the reader changes the selectors); `pos`, the selected token position
    (0-based), centres every position-indexed view on it."""
    query = f"?model={slug}&layer={layer}&head={head}"
    return query if pos is None else f"{query}&pos={pos}"


class Urls:
    """URLs relative to one file of the docs tree (a page or an embed page): what a template
    receives as `urls`. Every method names the file through the functions above."""

    def __init__(self, at: str):
        self.at = at
        self.root = rel_root(at)

    def to(self, path: str) -> str:
        """The URL of docs path `path` from this file."""
        return self.root + served(path)

    def prompt_data(self, slug: str, key: str) -> str:
        return self.to(prompt_data(slug, key))

    def artifact(self, slug: str, key: str) -> str:
        return self.to(artifact_copy(slug, key))

    def chart_spec(self, name: str) -> str:
        return self.to(chart_spec(name))

    def vendor_bundle(self) -> str:
        return self.to(VENDOR_BUNDLE)

    def download(self, scope: str, stem: str) -> str:
        return self.to(download(scope, stem))

    def embed(self, scope: str, stem: str) -> str:
        return self.to(embed_page(scope, stem))

    def home(self) -> str:
        return self.to(HOME)

    def prompt_page(self, key: str) -> str:
        return self.to(prompt_page(key))

    def prompt_head(self, key: str, slug: str, layer: int, head: int,
                    pos: int | None = None) -> str:
        """A prompt page opened at one model's layer and head (and position)."""
        return self.to(prompt_page(key)) + head_query(slug, layer, head, pos)

    def attention_heads(self, slug: str, key: str) -> str:
        return self.to(attention_heads(slug, key))

    def head_page(self, slug: str, layer: int, head: int) -> str:
        return self.to(head_page(slug, layer, head))

    def head_pages(self, slug: str) -> str:
        return self.to(head_pages(slug))

    def atlas_data(self, slug: str) -> str:
        return self.to(atlas_data(slug))

    def model_page(self, slug: str) -> str:
        return self.to(model_page(slug))

    def set_page(self, set_id: str) -> str:
        return self.to(set_page(set_id))

    def metrics_page(self) -> str:
        return self.to(METRICS_PAGE)

    def tokenizers_page(self) -> str:
        return self.to(TOKENIZERS_PAGE)

    def tokenize_page(self) -> str:
        return self.to(TOKENIZE_PAGE)

    def tokenize_embed(self) -> str:
        return self.to(TOKENIZE_EMBED)

    def tokenizer_file(self, slug: str) -> str:
        return self.to(tokenizer_file(slug))
