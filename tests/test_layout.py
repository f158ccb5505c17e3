"""Tests of the site's address book (generator/layout.py) and of the written formats.

- Every path of the generated site is spelled in generator/layout.py alone: a grep over the code of
  `generator/`, `templates/` and `site_src/` (Python string literals other than docstrings,
  templates and scripts without their comments) finds the layout's strings nowhere else. Prose (the
  hand-written Markdown pages, docstrings, comments) may describe the layout; the documented stable
  URLs are checked against the layout instead.
- The attention encoding has one decoder per language, and both agree with
  `site_src/artifact-format.md`: the test decodes a real artifact with its own few lines written
  from the document, runs the document's Python snippet, and runs the browser's codec
  (site_src/assets/attention-codec.js) under Node.js, each compared with `schema.decode_attention`.
- The artifact's `key` and a local checkpoint's `revision` are recomputed from the document's
  recipe.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

from generator import layout
from generator.metrics import renormalize_without_first
from generator.schema import decode_attention, decode_head, read_artifact

# Strings that name a file or directory of the generated site, wherever they appear in code.
SITE_STRINGS = [re.escape(s) for s in (
    "data/", "embed/", "downloads/", "charts/", "artifacts/", ".vl.json", ".lens.json",
    ".heads.json", ".dla.json", ".thumbs.json", ".labels.json", "atlas.json", "tokenizers.json",
    "manifest.json", "index.md", "assets/vendor",
    "index.html", "vega-bundle.js", "attention-codec.js", "assets/atlas", "atlas.js", "atlas.css",
    "embed.js", "tokenize.js", "tokenize-worker.js", "tokenize.css", "tokenize.html")]
# The per-head attention files: "/L" followed by a layer number, a placeholder or the string's end.
SITE_STRINGS.append(r"/L(?:\d|\{|$|[\"'`])")
# Page directories: before a value spliced in ({, <, a quote, or the end of a string) or after
# "../" (so "prompts/s" in a log line is not a path).
SITE_STRINGS.append(r"(?:\.\./)?\b(?:prompts|models|sets|compare)/(?=[{<\"'`]|$)"
                    r"|\.\./(?:prompts|models|sets|compare)/")
# In scripts and templates, a file name glued onto a URL ("prefix" + layer + ".json"): the page
# script derived the attention files that way before the layout handed it their URLs.
DERIVED = [r"[\"'`]\.(?:json|html)[\"'`]"]
PATTERN = re.compile("|".join(f"(?:{p})" for p in SITE_STRINGS + DERIVED), re.M)

LAYOUT = REPO / "generator" / "layout.py"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def python_literals(source: str) -> list[str]:
    """Every string literal of a Python source but its docstrings; f-strings in their literal
    pieces (what a reader sees between the {...} parts)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in skip]


def code_of(path: Path, text: str) -> list[str]:
    """The parts of a file that are code, not prose: what the grep looks at."""
    if path.suffix == ".py":
        return python_literals(text)
    if path.suffix == ".j2":
        return [re.sub(r"\{#.*?#\}", "", text, flags=re.S)]
    if path.suffix in (".js", ".css"):
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        return [re.sub(r"(?m)(^|[^:\"'])//.*$", r"\1", text)]
    return [text]


def spellings(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text("utf-8") if text is None else text
    return [m.group(0) for part in code_of(path, text) for m in PATTERN.finditer(part)]


def scanned_files() -> list[Path]:
    files = sorted((REPO / "generator").glob("*.py")) + sorted((REPO / "templates").glob("*.j2"))
    files += sorted(p for p in (REPO / "site_src").rglob("*")
                    if p.suffix in (".js", ".css", ".html", ".j2"))
    return [p for p in files if p != LAYOUT]


def test_site_paths_are_spelled_in_the_layout_alone():
    files = scanned_files()
    assert len(files) > 20 and any(p.name == "atlas.js" for p in files)
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := spellings(p))}
    assert not found, ("site paths spelled outside generator/layout.py (take them from it: "
                       f"functions in Python, `urls` in templates, data attributes in scripts): "
                       f"{found}")


@pytest.mark.parametrize("name, snippet", [
    ("x.py", 'base = f"data/{slug}/{key}"'),
    ("x.py", 'rel = "embed/" + scope + "/" + stem + ".html"'),
    ("x.py", 'url = f"../prompts/{key}.html"'),
    ("x.py", 'SUFFIX = ".vl.json"'),
    ("x.py", 'layer_file = base + f"/L{layer}.json"'),
    ("x.j2", '<a href="{{ root }}models/{{ m.slug }}.html">'),
    ("x.j2", '{{ chart_links("attention", pm.base[5:]) }} {% set s = root ~ "downloads/" %}'),
    ("x.js", 'getJSON(box.dataset.attn + layer + ".json"); const u = base + "/L" + n;'),
    ("x.js", 'const bundle = "assets/vendor/vega-bundle.js";'),
])
def test_the_grep_finds_a_path_spelled_again(name, snippet):
    assert spellings(Path(name), snippet), snippet


def test_the_grep_leaves_prose_and_other_strings_alone():
    assert spellings(Path("x.py"), '"""Writes data/<slug>/<key>.json."""\n'
                                   'x = f"{n} prompts/s"  # see embed/<scope>.html\n') == []
    assert spellings(Path("x.js"), "/* data/x.json */ // embed/a.html\nconst a = 1;") == []
    assert spellings(Path("x.j2"), "{# data/x.json #}<p>charts, data and embeds</p>") == []


def test_the_layout_spells_every_string_it_owns():
    # Only the layout's own strings: the DERIVED patterns name ways of deriving, not strings.
    literals = "\n".join(python_literals(LAYOUT.read_text("utf-8")))
    # "assets/atlas" is there as "assets/atlas.js"/".css"; "index.html" is `served(HOME)`.
    derived = (re.escape("assets/atlas"), re.escape("index.html"))
    missing = [p for p in SITE_STRINGS if not re.search(p, literals, re.M) and p not in derived]
    assert not missing, f"strings the layout does not spell (drop them from the test): {missing}"


def test_urls_are_relative_to_the_page():
    urls = layout.Urls(layout.prompt_page("facts/moon-landing"))
    assert urls.root == "../../"
    assert urls.model_page("gpt2") == "../../models/gpt2.html"
    assert urls.prompt_data("gpt2", "facts/moon-landing") == \
        "../../data/gpt2/facts/moon-landing.json"
    assert urls.to(layout.HOME) == "../../index.html"
    home = layout.Urls(layout.HOME)
    assert home.set_page("facts") == "sets/facts.html"
    embed = layout.Urls(layout.embed_page(layout.prompt_scope("gpt2", "facts/moon-landing"),
                                          "attention"))
    assert embed.to(layout.VENDOR_BUNDLE) == "../../../../assets/vendor/vega-bundle.js"
    assert layout.attention_head("gpt2", "a/b", 7, 2) == "data/gpt2/a/b/L7.H2.json.gz"
    assert not layout.is_docs_path("../x.json") and not layout.is_docs_path("/x.json")
    assert layout.is_docs_path(layout.download("compare/a/b", "cumulative"))


def test_documented_urls_are_the_layouts():
    """The stable URLs the guides promise are the ones the layout makes."""
    prompt = layout.prompt_scope("<model>", "<set>/<prompt>")
    expected = [layout.embed_page(prompt, "<chart>"), layout.download(prompt, "<chart>"),
                layout.embed_page(layout.compare_scope("<set>/<prompt>"), "cumulative"),
                layout.download(layout.compare_scope("<set>/<prompt>"), "cumulative"),
                layout.embed_page(layout.model_scope("<model>"), "<chart>"),
                layout.embed_page(layout.SITE_SCOPE, "tokenizers"),
                layout.download(layout.SITE_SCOPE, "tokenizers")]
    guide = (REPO / "site_src" / "embedding.md").read_text("utf-8")
    readme = (REPO / "README.md").read_text("utf-8")
    for url in expected + [layout.served(layout.TOKENIZE_PAGE), layout.TOKENIZE_EMBED,
                           layout.tokenizer_file("<model>")]:
        assert f"`{url}`" in guide, url
    for url in expected[:3]:
        assert url in readme, url
    head = layout.attention_heads("<model>", "<set>/<prompt>").replace(
        layout.LAYER, "<l>").replace(layout.HEAD, "<h>")
    assert f"`{head}`" in (REPO / "site_src" / "artifact-format.md").read_text("utf-8")


# --- the artifact format, as written --------------------------------------------------------------

FORMAT_DOC = REPO / "site_src" / "artifact-format.md"


@pytest.fixture(scope="module")
def artifact_path(demo_build) -> Path:
    """A real artifact of the demo build with more than one head and a long prompt."""
    path = demo_build.root / "artifacts" / "tiny-random-qwen2" / "basics" / "repeat.json"
    assert path.is_file()
    return path


def decode_as_documented(artifact: dict, blob: bytes) -> np.ndarray:
    """The document's words, in code, one byte at a time: every head's digits (⌈n/3⌉ bytes each,
    n from `nonzero`), then every head's overflow bytes (`overflow_bytes`), then every head's runs
    (`run_bytes`), head after head, layer by layer; digits three to a byte (36·d0 + 6·d1 + d2),
    value = digit + 1, a digit 5 taking the head's next overflow byte + 6; runs as varints
    (unsigned LEB128), alternating zero and non-zero, a zero run first, over the positions key
    by key (key k: queries k..T-1); weight = v / 128."""
    att = artifact["attention"]
    L, H, T = att["layers"], att["heads"], att["length"]
    assert len(blob) == att["bytes"] == artifact["lens"]["offset"] + artifact["lens"]["bytes"]
    heads = [(l, h) for l in range(L) for h in range(H)]
    n = [att["nonzero"][l][h] for l, h in heads]
    over = [att["overflow_bytes"][l][h] for l, h in heads]
    runs_size = [att["run_bytes"][l][h] for l, h in heads]
    digit_bytes = [-(-x // 3) for x in n]
    assert artifact["lens"]["offset"] == sum(digit_bytes) + sum(over) + sum(runs_size)
    positions = [(q, k) for k in range(T) for q in range(k, T)]      # key by key
    out = np.zeros((L, H, T, T))
    for i, (layer, head) in enumerate(heads):
        codes = blob[sum(digit_bytes[:i]):sum(digit_bytes[:i + 1])]
        extra = iter(blob[sum(digit_bytes) + sum(over[:i]):sum(digit_bytes) + sum(over[:i + 1])])
        values = []
        for j in range(n[i]):
            assert codes[j // 3] < 216
            d = (codes[j // 3] // 36, codes[j // 3] // 6 % 6, codes[j // 3] % 6)[j % 3]
            values.append(6 + next(extra) if d == 5 else d + 1)
        assert next(extra, None) is None, "overflow bytes left over"
        start = sum(digit_bytes) + sum(over) + sum(runs_size[:i])
        raw = blob[start:start + runs_size[i]]
        runs, value, shift = [], 0, 0
        for byte in raw:
            value |= (byte & 127) << shift
            shift += 7
            if byte < 128:
                runs.append(value)
                value, shift = 0, 0
        assert shift == 0 and sum(runs) == len(positions) and all(x >= 1 for x in runs[1:])
        pos, stored = 0, iter(values)
        for j, run in enumerate(runs):
            if j % 2:                                                # a non-zero run
                for q, k in positions[pos:pos + run]:
                    out[layer, head, q, k] = next(stored) / 128
            pos += run
        assert next(stored, None) is None, "values left over"
    return out


def test_attention_decodes_as_the_document_says(artifact_path):
    raw = json.loads(artifact_path.read_text("utf-8"))
    assert raw["attention"]["encoding"] == "nonzero-runs-base6"
    assert raw["attention"]["scale"] == 128
    blob = (artifact_path.parent / raw["attention"]["file"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == raw["attention"]["sha256"]
    documented = decode_as_documented(raw, blob)
    a = read_artifact(artifact_path)
    for layer in range(raw["attention"]["layers"]):
        np.testing.assert_array_equal(decode_attention(a, layer), documented[layer])
    # Rows sum to one within the documented rounding (1/256 per weight).
    sums = documented.sum(-1)
    assert np.all(np.abs(sums - 1) <= documented.shape[-1] / 256)
    assert (documented == 0).any(), "the artifact has no weight that rounds to 0"


def test_the_documents_python_snippets_decode_the_artifact(artifact_path, tmp_path):
    """The attention snippet (which reads the JSON) and then the lens snippet, run as written,
    give what `read_artifact` gives."""
    snippets = re.findall(r"```python\n(.*?)```", FORMAT_DOC.read_text("utf-8"), re.S)
    attention, = (s for s in snippets if "full = np.zeros" in s)
    lens, = (s for s in snippets if "next_rank = " in s)
    raw = json.loads(artifact_path.read_text("utf-8"))
    shutil.copy(artifact_path, tmp_path / "prompt.json")
    name = raw["attention"]["file"]
    shutil.copy(artifact_path.parent / name, tmp_path / name)
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for snippet in (attention, lens):
            exec(compile(snippet, str(FORMAT_DOC), "exec"), scope)  # noqa: S102 - our own document
    finally:
        os.chdir(cwd)
    a = read_artifact(artifact_path)
    expected = np.stack([decode_attention(a, layer) for layer in range(a["attention"]["layers"])])
    np.testing.assert_array_equal(scope["full"], expected)
    assert scope["ids"].tolist() == [layer["ids"] for layer in a["lens"]]
    assert scope["next_rank"].tolist() == [[r or 0 for r in layer["next_rank"]]
                                           for layer in a["lens"]]
    np.testing.assert_allclose(scope["probs"], [layer["probs"] for layer in a["lens"]],
                               atol=5e-7)
    stored = np.array([[np.nan if v is None else v for v in layer["next_logprob"]]
                       for layer in a["lens"]])
    np.testing.assert_allclose(scope["next_logprob"], stored, atol=5e-5, equal_nan=True)


NODE = shutil.which("node")
# .ci/run installs Node.js, so CI runs these; a machine without it skips them and says why.
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed: it runs the page's "
                                "attention codec outside a browser (Debian package 'nodejs').")


@needs_node
def test_the_browser_codec_decodes_like_python(demo_build, artifact_path):
    """site_src/assets/attention-codec.js on the site's per-head files: parseHead reads the file
    as written (gzipped) and as a host that sends it with Content-Encoding: gzip leaves it to the
    page (inflated) alike; decodeHead gives the CSR of schema.decode_head (the contract: layer,
    head, length, scale, rowStart, keys, values), headRows the weights of
    schema.decode_attention, and with "hide first token" those of renormalize_without_first; a
    damaged file is refused with a message."""
    a = read_artifact(artifact_path)
    slug, key, layer = "tiny-random-qwen2", "basics/repeat", 1
    heads = a["attention"]["heads"]
    files = [demo_build.root / "docs" / layout.attention_head(slug, key, layer, h)
             for h in range(heads)]
    assert all(f.read_bytes()[:2] == b"\x1f\x8b" for f in files), "head files are gzipped"
    script = """
const fs = require("fs"), zlib = require("zlib");
eval(fs.readFileSync(process.argv[1], "utf-8"));
(async () => {
const out = [];
for (const path of process.argv.slice(2)) {
  const body = fs.readFileSync(path);
  const file = await AtlasCodec.parseHead(body);
  if (JSON.stringify(await AtlasCodec.parseHead(zlib.gunzipSync(body))) !== JSON.stringify(file)) {
    throw new Error(path + ": the inflated body reads otherwise");
  }
  const labels = Array.from({length: file.length}, (_, i) => String(i));
  const csr = AtlasCodec.decodeHead(file);
  out.push([{layer: csr.layer, head: csr.head, length: csr.length, scale: csr.scale,
             types: [csr.rowStart, csr.keys, csr.values].map((x) => x.constructor.name),
             rowStart: Array.from(csr.rowStart), keys: Array.from(csr.keys),
             values: Array.from(csr.values)},
            AtlasCodec.headRows(file, labels, false), AtlasCodec.headRows(file, labels, true)]);
}
const file = await AtlasCodec.parseHead(fs.readFileSync(process.argv[2]));
let damaged = "";
try { AtlasCodec.decodeHead({...file, data: file.data.slice(0, -4)}); } catch (e) { damaged = e.message; }
out.push(damaged, AtlasCodec.headUrl("d/L{layer}.H{head}.json.gz", 3, 5));
process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""
    codec = REPO / "site_src" / "assets" / "attention-codec.js"
    proc = subprocess.run([NODE, "-e", script, str(codec), *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop() == "d/L3.H5.json.gz"
    assert out.pop().startswith(f"attention layer {layer} head 0: ")
    weights = decode_attention(a, layer)                   # [H, T, T]
    hidden = renormalize_without_first(weights.astype(np.float64))
    assert len(out) == heads
    t = weights.shape[-1]
    for head, (csr, plain, hide) in enumerate(out):
        row_start, keys, values = decode_head(a, layer, head)
        assert (csr["layer"], csr["head"], csr["length"], csr["scale"]) == (layer, head, t, 128)
        assert csr["types"] == ["Uint32Array", "Uint16Array", "Uint8Array"]
        assert (csr["rowStart"], csr["keys"], csr["values"]) == (
            row_start.tolist(), keys.tolist(), values.tolist())
        assert [(r["q"], r["k"]) for r in plain] == [(q, k) for q in range(t) for k in range(q + 1)]
        assert [r["w"] for r in plain] == [float(weights[head, r["q"], r["k"]]) for r in plain]
        assert all(r["k"] >= 1 for r in hide)
        np.testing.assert_allclose([r["w"] for r in hide],
                                   [hidden[head, r["q"], r["k"]] for r in hide], rtol=1e-12)


@needs_node
@pytest.mark.parametrize("side", [4, 7, 1000])
def test_a_long_prompts_chart_pools_blocks_as_python_does(demo_build, artifact_path, side,
                                                           monkeypatch):
    """An embed page's other head (attention-codec.js chartRows) gives the rows of the download
    (embed.attention_rows): past `side` tokens, blocks of tokens pooled by their maximum, each
    block's largest weight, labelled by its positions and first token."""
    from generator import embed
    monkeypatch.setattr(embed, "ATTENTION_SIDE", side)
    a = read_artifact(artifact_path)
    slug, key, layer, head = "tiny-random-qwen2", "basics/repeat", 1, 2
    path = demo_build.root / "docs" / layout.attention_head(slug, key, layer, head)
    tokens = [{"label": f"{i}: t{i}<&", "text": f"t{i}<&"} for i in range(a["attention"]["length"])]
    script = """
const fs = require("fs");
eval(fs.readFileSync(process.argv[1], "utf-8"));
AtlasCodec.parseHead(fs.readFileSync(process.argv[2])).then((file) => {
  const out = AtlasCodec.chartRows(file, JSON.parse(process.argv[3]), Number(process.argv[4]));
  process.stdout.write(JSON.stringify(out));
});
"""
    codec = REPO / "site_src" / "assets" / "attention-codec.js"
    proc = subprocess.run([NODE, "-e", script, str(codec), str(path), json.dumps(tokens),
                           str(side)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = embed.attention_rows(a, layer, head, tokens)
    assert json.loads(proc.stdout) == rows
    t, b = len(tokens), embed.attention_block(len(tokens))
    n = -(-t // b)
    assert len(rows) == n * (n + 1) // 2 and (b == 1) == (side >= t)
    weights = decode_attention(a, layer)[head]
    for r in rows:
        cell = weights[r["q"] * b:(r["q"] + 1) * b, r["k"] * b:(r["k"] + 1) * b]
        assert r["w"] == float(cell.max())
        first = tokens[r["q"] * b]
        assert r["ql"] == (first["label"] if b == 1
                           else f"{r['q'] * b}–{min(t, r['q'] * b + b) - 1}: {first['text']}")
    assert (embed.pooled_note(t) is None) == (b == 1)


def test_key_and_revision_follow_the_document(demo_build, artifact_path):
    a = json.loads(artifact_path.read_text("utf-8"))
    prov = a["provenance"]
    # key: SHA-256 of the UTF-8 of the JSON array [schema_version, model_id, revision, text,
    # settings], keys sorted, no whitespace, non-ASCII as itself.
    document = json.dumps([a["schema_version"], prov["model_id"], prov["revision"],
                           a["prompt"]["text"], prov["settings"]],
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(document.encode("utf-8")).hexdigest() == a["key"]
    # A prompt with non-ASCII text, so the "non-ASCII as itself" clause is tested too.
    cjk = json.loads((artifact_path.parent.parent / "mixed" / "cjk-emoji.json").read_text("utf-8"))
    doc2 = json.dumps([cjk["schema_version"], prov["model_id"], prov["revision"],
                       cjk["prompt"]["text"], cjk["provenance"]["settings"]],
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(doc2.encode("utf-8")).hexdigest() == cjk["key"]
    # revision of a local checkpoint: "sha256:" + the first 16 hex digits of one SHA-256 over, per
    # weight file in order of name, its name, a zero byte and the hex SHA-256 of its content.
    checkpoint = demo_build.root / "demo-models" / prov["model_id"]
    h = hashlib.sha256()
    weights = sorted((p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin")),
                     key=lambda p: p.name)
    assert weights
    for f in weights:
        h.update(f.name.encode("utf-8") + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest()
                 .encode("ascii"))
    assert prov["revision"] == "sha256:" + h.hexdigest()[:16]
    assert prov["prompt_sha256"] == hashlib.sha256(a["prompt"]["text"].encode()).hexdigest()
