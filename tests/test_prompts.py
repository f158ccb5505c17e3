"""Tests for generator/prompts.py: every curated set validates, and every kind of bad file
fails with a message that names the file, the field and the fix."""

from __future__ import annotations

import pickle
import re
import textwrap
import unicodedata
from pathlib import Path

import pytest

from generator.errors import AtlasError
from generator.prompts import (
    MAX_PROMPT_CHARS,
    PROMPT_FIELDS,
    PROMPT_ID_RE,
    SET_FIELDS,
    SET_ID_RE,
    Prompt,
    PromptSet,
    PromptSetError,
    default_prompt_dir,
    load_prompt_set,
    load_prompt_sets,
)

REPO = Path(__file__).resolve().parent.parent
DOC_PAGE = REPO / "site_src" / "prompt-sets.md"

GOOD = """\
title: A small set
description: Two prompts for tests.
prompts:
  - id: first
    text: "Hello world"
    note: Look at the first token.
  - id: second
    text: The cat sat on the
    note: Expect " mat".
    tags: [animals]
"""


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


def one_prompt(**fields: str) -> str:
    """A set file with one prompt whose YAML lines are given as field=raw_yaml_value."""
    values = {"id": "p", "text": "hi", "note": "n"}
    values.update(fields)
    lines = ["title: T", "description: D", "prompts:"]
    first = True
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"  {'- ' if first else '  '}{key}: {value}")
        first = False
    return "\n".join(lines) + "\n"


# --- the curated sets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curated() -> list[PromptSet]:
    return load_prompt_sets([default_prompt_dir()])


def test_default_prompt_dir_is_the_repos():
    assert default_prompt_dir() == REPO / "prompt_sets"


def test_curated_sets_load(curated):
    ids = [s.id for s in curated]
    assert len(curated) >= 5
    for expected in ("induction", "agreement", "facts", "multilingual", "code"):
        assert expected in ids
    assert ids == sorted(ids), "a directory's files load sorted by name"


def test_curated_sets_have_enough_prompts(curated):
    total = sum(len(s.prompts) for s in curated)
    assert total >= 35
    for prompt_set in curated:
        # The long-context set is the exception: four long prompts (each a long computation).
        assert len(prompt_set.prompts) >= (4 if prompt_set.id == LONG_SET else 5), prompt_set.id


def test_curated_prompt_keys_are_unique(curated):
    keys = [p.key for s in curated for p in s.prompts]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("path", sorted(REPO.glob("prompt_sets/*.y*ml")), ids=lambda p: p.name)
def test_each_curated_file_validates(path):
    prompt_set = load_prompt_set(path)
    assert SET_ID_RE.match(prompt_set.id)
    assert prompt_set.title and prompt_set.description
    for prompt in prompt_set.prompts:
        assert PROMPT_ID_RE.match(prompt.id)
        assert prompt.set_id == prompt_set.id
        assert prompt.note.strip()
        if prompt_set.id == LONG_SET:     # tests/test_prompts.py::test_the_long_context_set
            continue
        # Short enough for the pages and for both models' contexts (~60 GPT-2 tokens).
        assert len(prompt.text) <= 200, prompt.key
        if "multilingual" in prompt.tags or prompt_set.id == "multilingual":
            assert len(prompt.text) <= 80, prompt.key


LONG_SET = "long-context"


def test_the_long_context_set():
    """At least four prompts of about 500 to 2,048 tokens for both real tokenizers, one of them
    longer than GPT-2's context (1,024) and within 2,048 Qwen2.5 tokens; each a document ending
    where its answer lies far back (a note says what to look for)."""
    from generator.demo import load_real_tokenizer
    prompts = load_prompt_set(REPO / "prompt_sets" / f"{LONG_SET}.yaml").prompts
    assert len(prompts) >= 4
    counts = {}
    for name in ("gpt2", "qwen2.5"):
        tok = load_real_tokenizer(name)
        counts[name] = [len(tok(p.text, add_special_tokens=False)["input_ids"]) for p in prompts]
    for i, p in enumerate(prompts):
        gpt2, qwen = counts["gpt2"][i], counts["qwen2.5"][i]
        assert 450 <= min(gpt2, qwen) and max(gpt2, qwen) <= 2048, (p.key, gpt2, qwen)
        assert "long" in p.tags and len(p.note) > 200, p.key
    assert any(g > 1024 and q <= 2048 for g, q in zip(counts["gpt2"], counts["qwen2.5"]))
    assert "a" * 10 not in "".join(p.text for p in prompts), "texts, not filler"


def test_multilingual_set_has_the_promised_scripts(curated):
    text = "".join(p.text for s in curated if s.id == "multilingual" for p in s.prompts)
    # The first word of a character's Unicode name is its script for these blocks.
    names = {unicodedata.name(ch, "?").split()[0] for ch in text}
    for script in ("CJK", "HIRAGANA", "HANGUL", "CYRILLIC", "ARABIC", "DEVANAGARI"):
        assert script in names, script
    assert "\u200d" in text, "a ZWJ emoji sequence"
    assert "\U0001f1eb" in text, "a flag (regional indicator letters)"


# --- loading behaviour -----------------------------------------------------------------------


def test_good_file_loads(tmp_path):
    prompt_set = load_prompt_set(write(tmp_path, "small-set.yaml", GOOD))
    assert prompt_set.id == "small-set"
    assert prompt_set.title == "A small set"
    assert prompt_set.path.endswith("small-set.yaml")
    first, second = prompt_set.prompts
    assert first == Prompt(set_id="small-set", id="first", text="Hello world", note="Look at the first token.")
    assert second.tags == ("animals",)
    assert second.key == "small-set/second"


def test_text_is_kept_exactly(tmp_path):
    decomposed = "Cafe\u0301"  # e + combining acute: must not be NFC-normalized to "Café"
    content = (
        "title: T\ndescription: D\nprompts:\n"
        f'  - id: a\n    text: "  {decomposed} "\n    note: n\n'
        "  - id: b\n    text: |\n      def f():\n          return 1\n    note: n\n"
    )
    prompt_set = load_prompt_set(write(tmp_path, "exact.yaml", content))
    assert prompt_set.prompts[0].text == f"  {decomposed} "
    assert prompt_set.prompts[1].text == "def f():\n    return 1\n"


def test_objects_are_frozen_and_errors_pickle(tmp_path):
    prompt_set = load_prompt_set(write(tmp_path, "s.yaml", GOOD))
    with pytest.raises(AttributeError):
        prompt_set.prompts[0].text = "changed"  # type: ignore[misc]
    error = PromptSetError("f.yaml", "prompts[0].id", "bad", "fix it", line=3)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "f.yaml:3: prompts[0].id: bad. Fix: fix it"
    assert isinstance(copy, ValueError) and isinstance(copy, AtlasError)


def test_directory_loads_yaml_and_yml_sorted(tmp_path):
    write(tmp_path, "b-set.yml", GOOD)
    write(tmp_path, "a-set.yaml", GOOD)
    write(tmp_path, "notes.txt", "not a set")
    write(tmp_path, ".hidden.yaml", "garbage: [")
    sets = load_prompt_sets([tmp_path])
    assert [s.id for s in sets] == ["a-set", "b-set"]


def test_files_and_directories_mix_and_repeats_load_once(tmp_path):
    directory = tmp_path / "more"
    directory.mkdir()
    single = write(tmp_path, "single.yaml", GOOD)
    inside = write(directory, "inside.yaml", GOOD)
    sets = load_prompt_sets([single, directory, inside])
    assert [s.id for s in sets] == ["single", "inside"]


# --- one test per error ----------------------------------------------------------------------


def test_error_non_utf8(tmp_path):
    path = write(tmp_path, "latin1.yaml", "title: Caf\xe9\n".encode("latin-1"))
    with pytest.raises(
        PromptSetError,
        match=r"latin1\.yaml:1: \(encoding\): not valid UTF-8: byte 0xe9 at byte offset 10.*"
              r"Fix: save the file as UTF-8",
    ):
        load_prompt_set(path)


def test_error_malformed_yaml(tmp_path):
    path = write(tmp_path, "broken.yaml", 'title: T\ndescription: D\nprompts:\n  - id: a\n    text: "unclosed\n')
    with pytest.raises(
        PromptSetError,
        match=r"broken\.yaml:\d+:\d+: \(YAML syntax\): not valid YAML.*"
              r"Fix: correct the YAML",
    ) as info:
        load_prompt_set(path)
    assert info.value.line is not None and info.value.line >= 5


def test_error_malformed_yaml_bad_indentation(tmp_path):
    path = write(tmp_path, "indent.yaml", "title: T\n  description: D\n")
    with pytest.raises(PromptSetError, match=r"indent\.yaml:2:\d+: \(YAML syntax\)"):
        load_prompt_set(path)


def test_error_control_character(tmp_path):
    path = write(tmp_path, "bell.yaml", "title: T\ndescription: D\x07\n")
    with pytest.raises(
        PromptSetError,
        match=r"bell\.yaml:2:15: \(YAML syntax\): not valid YAML: control character U\+0007 is not allowed"
              r"\. Fix: remove it, or write it as an escape",
    ):
        load_prompt_set(path)


@pytest.mark.parametrize(
    "content, found",
    [("- just\n- a list\n", "found a list"), ("", "the file is empty"), ("hello\n", "found a string")],
)
def test_error_top_level_not_a_mapping(tmp_path, content, found):
    path = write(tmp_path, "flat.yaml", content)
    with pytest.raises(
        PromptSetError,
        match=rf"flat\.yaml.*\(top level\): the top level must be a mapping.*{found}.*"
              rf"Fix: start the file with 'title: \.\.\.'",
    ):
        load_prompt_set(path)


def test_error_unknown_top_level_field(tmp_path):
    path = write(tmp_path, "extra.yaml", GOOD + "author: me\n")
    with pytest.raises(
        PromptSetError,
        match=r"extra\.yaml:11: author: unknown field 'author'"
              r"\. Fix: remove it; the valid fields are title, description, prompts",
    ):
        load_prompt_set(path)


def test_error_unknown_prompt_field_suggests_close_match(tmp_path):
    path = write(tmp_path, "typo.yaml", one_prompt(notes="n", note=None))
    with pytest.raises(
        PromptSetError,
        match=r"typo\.yaml:\d+: prompts\[0\]\.notes: unknown field 'notes'"
              r"\. Fix: rename it to 'note' or remove it; the valid fields are id, text, note, tags",
    ):
        load_prompt_set(path)


def test_error_missing_top_level_field(tmp_path):
    path = write(tmp_path, "nodesc.yaml", GOOD.replace("description: Two prompts for tests.\n", ""))
    with pytest.raises(
        PromptSetError,
        match=r"nodesc\.yaml:1: description: required field 'description' is missing"
              r"\. Fix: add 'description:' to the top level",
    ):
        load_prompt_set(path)


def test_error_missing_prompt_field(tmp_path):
    path = write(tmp_path, "notext.yaml", one_prompt(text=None))
    with pytest.raises(
        PromptSetError,
        match=r"notext\.yaml:4: prompts\[0\]\.text: required field 'text' is missing"
              r"\. Fix: add 'text:' to prompts\[0\]; required fields are id, text, note",
    ):
        load_prompt_set(path)


@pytest.mark.parametrize(
    "content, field, fix",
    [
        (GOOD.replace("title: A small set", "title: 42"), r"title", r"write title as text; put it in quotes"),
        (GOOD.replace("Expect \" mat\".", "[a, b]"), r"prompts\[1\]\.note", r"write note as text"),
        (one_prompt(text="2024-01-01"), r"prompts\[0\]\.text", r"put the text in quotes"),
        (one_prompt(text="true"), r"prompts\[0\]\.text", r"put the text in quotes"),
        (one_prompt(id="1984"), r"prompts\[0\]\.id", r"put the id in quotes"),
        (one_prompt(tags="repetition"), r"prompts\[0\]\.tags", r"write tags as a list"),
        (one_prompt(tags="[ok, 3]"), r"prompts\[0\]\.tags\[1\]", r"write tags as short words"),
        ("title: T\ndescription: D\nprompts:\n  id: a\n", r"prompts", r"write each prompt as a list item"),
        ("title: T\ndescription: D\nprompts:\n  - just text\n", r"prompts\[0\]", r"write the prompt as '- id: \.\.\.'"),
    ],
)
def test_error_wrong_types(tmp_path, content, field, fix):
    path = write(tmp_path, "types.yaml", content)
    with pytest.raises(
        PromptSetError,
        match=rf"types\.yaml:\d+: {field}: .*must be a .*"
              rf"Fix: {fix}",
    ):
        load_prompt_set(path)


def test_error_invalid_set_id(tmp_path):
    path = write(tmp_path, "My Set.yaml", GOOD)
    with pytest.raises(
        PromptSetError,
        match=r"My Set\.yaml: set id \(file name\): the set id 'My Set' taken from the file name is not valid"
              r"\. Fix: rename the file .* e\.g\. my-set\.yaml",
    ):
        load_prompt_set(path)


def test_error_not_a_yaml_file(tmp_path):
    path = write(tmp_path, "set.txt", GOOD)
    with pytest.raises(
        PromptSetError,
        match=r"set\.txt: \(file name\): a prompt set file must end in \.yaml or \.yml.*"
              r"Fix: rename it to set\.yaml",
    ):
        load_prompt_set(path)


@pytest.mark.parametrize("bad_id", ["Capital_France", "-leading-hyphen", "a" * 65, "'with space'"])
def test_error_invalid_prompt_id(tmp_path, bad_id):
    path = write(tmp_path, "ids.yaml", one_prompt(id=bad_id))
    with pytest.raises(
        PromptSetError,
        match=r"ids\.yaml:4: prompts\[0\]\.id: .* is not a valid prompt id"
              r"\. Fix: use lowercase letters, digits and hyphens",
    ):
        load_prompt_set(path)


def test_error_duplicate_prompt_ids(tmp_path):
    path = write(tmp_path, "dupes.yaml", GOOD.replace("id: second", "id: first"))
    with pytest.raises(
        PromptSetError,
        match=r"dupes\.yaml:7: prompts\[1\]\.id: duplicate prompt id 'first': prompts\[0\] and prompts\[1\] both use it"
              r"\. Fix: give each prompt in the set its own id",
    ):
        load_prompt_set(path)


def test_error_duplicate_key_in_prompt(tmp_path):
    path = write(tmp_path, "twice.yaml", GOOD.replace("    note: Look at the first token.\n", "    note: a\n    note: b\n"))
    with pytest.raises(
        PromptSetError,
        match=r"twice\.yaml:7: prompts\[0\]\.note: key 'note' appears twice \(lines 6 and 7\)"
              r"\. Fix: keep only one of them",
    ):
        load_prompt_set(path)


@pytest.mark.parametrize("text", ['""', '"   "', '"\\n\\t"', ""])
def test_error_empty_text(tmp_path, text):
    path = write(tmp_path, "empty.yaml", one_prompt(text=text))
    with pytest.raises(
        PromptSetError,
        match=r"empty\.yaml:\d+: prompts\[0\]\.text: text is empty or only whitespace"
              r"\. Fix: write the prompt text",
    ):
        load_prompt_set(path)


@pytest.mark.parametrize("prompts", ["prompts:\n", "prompts: []\n"])
def test_error_no_prompts(tmp_path, prompts):
    path = write(tmp_path, "none.yaml", "title: T\ndescription: D\n" + prompts)
    with pytest.raises(
        PromptSetError,
        match=r"none\.yaml:\d+: prompts: the set has no prompts"
              r"\. Fix: add at least one prompt",
    ):
        load_prompt_set(path)


def test_error_text_too_long(tmp_path):
    path = write(tmp_path, "long.yaml", one_prompt(text="a" * (MAX_PROMPT_CHARS + 1)))
    with pytest.raises(
        PromptSetError,
        match=rf"long\.yaml:5: prompts\[0\]\.text: text is {MAX_PROMPT_CHARS + 1} characters long, more than the limit of {MAX_PROMPT_CHARS}"
              rf"\. Fix: shorten the prompt",
    ):
        load_prompt_set(path)


def test_text_at_the_limit_is_fine(tmp_path):
    path = write(tmp_path, "limit.yaml", one_prompt(text="a" * MAX_PROMPT_CHARS))
    assert len(load_prompt_set(path).prompts[0].text) == MAX_PROMPT_CHARS


def test_error_duplicate_set_ids_across_files(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = write(tmp_path / "one", "facts.yaml", GOOD)
    second = write(tmp_path / "two", "facts.yml", GOOD)
    with pytest.raises(
        PromptSetError,
        match=r"two/facts\.yml: set id \(file name\): set id 'facts' is also the id of .*one/facts\.yaml"
              r"\. Fix: rename one of the two files",
    ):
        load_prompt_sets([first, second])


def test_error_missing_path(tmp_path):
    with pytest.raises(
        PromptSetError,
        match=r"nowhere\.yaml: \(file\): no such file or directory"
              r"\. Fix: check the path",
    ):
        load_prompt_sets([tmp_path / "nowhere.yaml"])


def test_error_empty_directory(tmp_path):
    with pytest.raises(
        PromptSetError,
        match=r"\(directory\): contains no \*\.yaml or \*\.yml prompt set files"
              r"\. Fix: add a prompt set file",
    ):
        load_prompt_sets([tmp_path])


def test_first_bad_file_in_a_directory_is_named(tmp_path):
    write(tmp_path, "a-good.yaml", GOOD)
    write(tmp_path, "b-bad.yaml", GOOD.replace("title: A small set\n", ""))
    with pytest.raises(PromptSetError, match=r"b-bad\.yaml:\d+: title: required field"):
        load_prompt_sets([tmp_path])


# --- the documentation page ------------------------------------------------------------------


def test_doc_page_covers_fields_and_errors():
    page = DOC_PAGE.read_text(encoding="utf-8")
    for field in SET_FIELDS + PROMPT_FIELDS:
        assert re.search(rf"`{field}`", page), field
    assert f"{MAX_PROMPT_CHARS:,}" in page or str(MAX_PROMPT_CHARS) in page
    assert "model-atlas build --prompts" in page
    for phrase in (
        "not valid UTF-8",
        "not valid YAML",
        "the top level must be a mapping",
        "unknown field",
        "required field",
        "must be a",
        "taken from the file name is not valid",
        "is not a valid prompt id",
        "duplicate prompt id",
        "appears twice",
        "text is empty or only whitespace",
        "the set has no prompts",
        "characters long, more than the limit",
        "is also the id of",
    ):
        assert phrase in page, phrase
