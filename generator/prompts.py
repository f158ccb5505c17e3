"""Curated prompt sets: the YAML format, its loader and its validator.

Prompt sets are the input of the compute stage: ``generator/compute.py`` runs every prompt of
every set through each model and writes artifacts that the render stage turns into pages. A set
is one YAML file (``prompt_sets/<set-id>.yaml``); its id is the file name's stem. The format is
documented in ``site_src/prompt-sets.md``.

Everything a user can get wrong in a set file raises :class:`PromptSetError`, whose message names
the file (with the line where YAML gives one), the field (``prompts[3].id``), what is wrong and
how to fix it. Prompt text is kept exactly as YAML parsed it: no stripping and no Unicode
normalization, because tokenization (and so every artifact) depends on the exact characters. The
check of a prompt's length in tokens against a model's context window happens in the compute
stage, which has the tokenizer; here only a generous character limit is enforced.

This module imports no torch, so the render stage and the CLI's validation can use it cheaply.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import AtlasError
from .resources import resource_path

__all__ = [
    "MAX_PROMPT_CHARS",
    "PROMPT_ID_RE",
    "Prompt",
    "PromptSet",
    "PromptSetError",
    "SET_ID_RE",
    "default_prompt_dir",
    "load_prompt_set",
    "load_prompt_sets",
]

SET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
PROMPT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

# Room for the longest prompt a reader would paste from a document: a few pages, well past 2,048
# tokens of any ordinary text (English prose is about 4 to 5 characters per GPT-2 token, code and
# non-Latin scripts fewer), so only a pasted book or a file read by mistake goes over. Whether a
# prompt fits a model's context is checked in tokens by the compute stage, per model.
MAX_PROMPT_CHARS = 20000

YAML_SUFFIXES = (".yaml", ".yml")

SET_FIELDS = ("title", "description", "prompts")
SET_REQUIRED = ("title", "description", "prompts")
PROMPT_FIELDS = ("id", "text", "note", "tags")
PROMPT_REQUIRED = ("id", "text", "note")

_ID_RULE = (
    "lowercase letters, digits and hyphens, starting with a letter or digit, at most 64 characters"
)


class PromptSetError(AtlasError, ValueError):
    """A prompt set file that cannot be used, with where, what and how to fix it.

    An :class:`~generator.errors.AtlasError` (so the CLI reports it as a one-line error) and a
    ``ValueError``.

    The message reads ``FILE[:LINE[:COLUMN]]: FIELD: PROBLEM. Fix: FIX``. The parts are kept as
    attributes so that callers (the CLI, tests) need not parse the message.
    """

    def __init__(
        self,
        path: str,
        field: str,
        problem: str,
        fix: str,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        self.fix = fix
        self.line = line
        self.column = column
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {field}: {problem}. Fix: {fix}")

    def __reduce__(self):  # keep the exception picklable (e.g. across worker processes)
        return (
            type(self),
            (self.path, self.field, self.problem, self.fix, self.line, self.column),
        )


@dataclass(frozen=True)
class Prompt:
    """One curated prompt: the exact text fed to the models, and what a reader should look for."""

    set_id: str
    id: str
    text: str
    note: str
    tags: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identifier unique across all sets, used in artifact and page paths."""
        return f"{self.set_id}/{self.id}"


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt set file. ``path`` is for display (relative to the working directory
    when the file lies below it)."""

    id: str
    title: str
    description: str
    prompts: tuple[Prompt, ...]
    path: str


# --- public entry points ---------------------------------------------------------------------


def default_prompt_dir() -> Path:
    """The curated ``prompt_sets/`` directory: the checkout's, else the installed copy."""
    return resource_path("prompt_sets")


def load_prompt_set(path: str | Path) -> PromptSet:
    """Read and validate one prompt set file; raise :class:`PromptSetError` on any problem."""
    path = Path(path)
    shown = _display_path(path)
    set_id = _set_id_from_path(path, shown)
    text = _read_utf8(path, shown)
    root, data = _parse_yaml(text, shown)
    return _build_set(set_id, data, _Locator(root), shown)


def load_prompt_sets(paths: Iterable[str | Path]) -> list[PromptSet]:
    """Load sets from files and directories, in the order given.

    A directory contributes every ``*.yaml`` / ``*.yml`` file directly inside it (not in
    subdirectories, not hidden files), sorted by name. A file named twice is loaded once. Two
    different files with the same set id raise :class:`PromptSetError` naming both.
    """
    sets: list[PromptSet] = []
    seen_files: set[Path] = set()
    by_id: dict[str, PromptSet] = {}
    for path in paths:
        for file in _expand(Path(path)):
            resolved = file.resolve()
            if resolved in seen_files:
                continue
            seen_files.add(resolved)
            prompt_set = load_prompt_set(file)
            _check_unique_set_id(prompt_set, by_id)
            by_id[prompt_set.id] = prompt_set
            sets.append(prompt_set)
    return sets


# --- files -----------------------------------------------------------------------------------


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def _expand(path: Path) -> list[Path]:
    shown = _display_path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() in YAML_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise PromptSetError(
                shown,
                "(directory)",
                "contains no *.yaml or *.yml prompt set files",
                "add a prompt set file such as my-set.yaml there, or pass the file itself",
            )
        return files
    if not path.exists():
        raise PromptSetError(
            shown,
            "(file)",
            "no such file or directory",
            "check the path; pass a prompt set file (.yaml or .yml) or a directory of them",
        )
    return [path]


def _set_id_from_path(path: Path, shown: str) -> str:
    if path.suffix.lower() not in YAML_SUFFIXES:
        raise PromptSetError(
            shown,
            "(file name)",
            f"a prompt set file must end in .yaml or .yml, not {path.suffix or 'no suffix'!r}",
            f"rename it to {path.stem}.yaml",
        )
    set_id = path.stem
    if not SET_ID_RE.match(set_id):
        raise PromptSetError(
            shown,
            "set id (file name)",
            f"the set id {set_id!r} taken from the file name is not valid",
            f"rename the file so its name is {_ID_RULE}, e.g. {_suggest_id(set_id)}{path.suffix}",
        )
    return set_id


def _read_utf8(path: Path, shown: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptSetError(
            shown,
            "(file)",
            f"cannot be read: {exc.strerror or exc}",
            "check the path and its permissions",
        ) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptSetError(
            shown,
            "(encoding)",
            f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason})",
            "save the file as UTF-8",
            line=line,
        ) from exc


def _check_unique_set_id(prompt_set: PromptSet, by_id: dict[str, PromptSet]) -> None:
    other = by_id.get(prompt_set.id)
    if other is not None:
        raise PromptSetError(
            prompt_set.path,
            "set id (file name)",
            f"set id {prompt_set.id!r} is also the id of {other.path}",
            "rename one of the two files; a set's id is its file name without the suffix",
        )


# --- YAML ------------------------------------------------------------------------------------


def _parse_yaml(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    """Parse to both a node tree (for line numbers) and plain data."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PromptSetError(
            shown,
            "(YAML syntax)",
            f"not valid YAML: {problem or exc}",
            "correct the YAML at that line; quote text with special characters or use a block "
            "scalar (text: |) and indent consistently with spaces",
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.reader.ReaderError as exc:  # a raw control character; position counts characters
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise PromptSetError(
            shown,
            "(YAML syntax)",
            f"not valid YAML: control character U+{exc.character:04X} is not allowed",
            "remove it, or write it as an escape in a double-quoted string (e.g. \"\\t\")",
            line=line,
            column=column,
        ) from exc
    except yaml.YAMLError as exc:
        raise PromptSetError(
            shown, "(YAML syntax)", f"not valid YAML: {exc}", "correct the YAML"
        ) from exc
    return root, data


class _Locator:
    """Find the line of a field in the composed YAML node tree, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def node(self, *parts: str | int) -> yaml.Node | None:
        """The value node at ``parts`` (keys and list indices), or the deepest one found."""
        node = self.root
        for part in parts:
            child = _child(node, part)
            if child is None:
                return node
            node = child
        return node

    def line(self, *parts: str | int) -> int | None:
        node = self.node(*parts)
        return node.start_mark.line + 1 if node is not None else None

    def key_line(self, parts: tuple[str | int, ...], key: Any) -> int | None:
        """The line of the key ``key`` in the mapping at ``parts``."""
        mapping = self.node(*parts)
        if isinstance(mapping, yaml.MappingNode):
            for key_node, _ in mapping.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                    return key_node.start_mark.line + 1
        return self.line(*parts)


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def _check_duplicate_keys(node: yaml.Node | None, field: str, shown: str) -> None:
    """YAML silently keeps the last of two equal keys; a curated file should never rely on that."""
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in first_line:
            where = f"{field}.{key_node.value}" if field else key_node.value
            raise PromptSetError(
                shown,
                where,
                f"key {key_node.value!r} appears twice "
                f"(lines {first_line[key_node.value]} and {line})",
                "keep only one of them",
                line=line,
            )
        first_line[key_node.value] = line


# --- validation ------------------------------------------------------------------------------


def _build_set(set_id: str, data: Any, loc: _Locator, shown: str) -> PromptSet:
    if not isinstance(data, dict):
        found = "the file is empty" if data is None else f"found {_type_name(data)}"
        raise PromptSetError(
            shown,
            "(top level)",
            "the top level must be a mapping with the keys title, description and prompts; "
            + found,
            "start the file with 'title: ...', 'description: ...' and 'prompts:' followed by a "
            "list of prompts (see site_src/prompt-sets.md)",
            line=loc.line(),
        )
    _check_duplicate_keys(loc.node(), "", shown)
    _check_fields(data, SET_FIELDS, SET_REQUIRED, "", (), loc, shown)
    title = _text_field(data, "title", "title", ("title",), loc, shown)
    description = _text_field(data, "description", "description", ("description",), loc, shown)
    items = _prompt_list(data.get("prompts"), loc, shown)
    prompts = tuple(_build_prompt(set_id, item, i, loc, shown) for i, item in enumerate(items))
    _check_unique_prompt_ids(prompts, loc, shown)
    return PromptSet(id=set_id, title=title, description=description, prompts=prompts, path=shown)


def _check_fields(
    data: dict,
    valid: tuple[str, ...],
    required: tuple[str, ...],
    field: str,
    parts: tuple[str | int, ...],
    loc: _Locator,
    shown: str,
) -> None:
    where = f"{field}." if field else ""
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"rename it to {close[0]!r} or " if close else ""
            raise PromptSetError(
                shown,
                f"{where}{key}",
                f"unknown field {str(key)!r}",
                f"{hint}remove it; the valid fields are {', '.join(valid)}",
                line=loc.key_line(parts, key),
            )
    for key in required:
        if key not in data:
            raise PromptSetError(
                shown,
                f"{where}{key}",
                f"required field {key!r} is missing",
                f"add '{key}:' to {field or 'the top level'}; "
                f"required fields are {', '.join(required)}",
                line=loc.line(*parts),
            )


def _text_field(
    data: dict, key: str, field: str, parts: tuple[str | int, ...], loc: _Locator, shown: str
) -> str:
    """A required, non-empty, human-written string (title, description, note); stripped of the
    trailing newline that block scalars add."""
    value = data[key]
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PromptSetError(
            shown,
            field,
            f"must be a string, found {_type_name(value)}",
            f"write {key} as text; put it in quotes if YAML reads it as another type",
            line=loc.line(*parts),
        )
    if not value.strip():
        raise PromptSetError(
            shown,
            field,
            f"{key} is empty",
            f"write a {key}",
            line=loc.line(*parts),
        )
    return value.strip()


def _prompt_list(value: Any, loc: _Locator, shown: str) -> list:
    if value is None or (isinstance(value, list) and not value):
        raise PromptSetError(
            shown,
            "prompts",
            "the set has no prompts",
            "add at least one prompt under 'prompts:' as a list item ('- id: ...', 'text: ...', "
            "'note: ...')",
            line=loc.line("prompts"),
        )
    if not isinstance(value, list):
        raise PromptSetError(
            shown,
            "prompts",
            f"must be a list of prompts, found {_type_name(value)}",
            "write each prompt as a list item starting with '- id: ...'",
            line=loc.line("prompts"),
        )
    return value


def _build_prompt(set_id: str, item: Any, index: int, loc: _Locator, shown: str) -> Prompt:
    field = f"prompts[{index}]"
    parts: tuple[str | int, ...] = ("prompts", index)
    if not isinstance(item, dict):
        raise PromptSetError(
            shown,
            field,
            f"each prompt must be a mapping with id, text and note, found {_type_name(item)}",
            "write the prompt as '- id: ...' with 'text: ...' and 'note: ...' indented below it",
            line=loc.line(*parts),
        )
    _check_duplicate_keys(loc.node(*parts), field, shown)
    _check_fields(item, PROMPT_FIELDS, PROMPT_REQUIRED, field, parts, loc, shown)
    prompt_id = _prompt_id(item["id"], f"{field}.id", parts + ("id",), loc, shown)
    text = _prompt_text(item["text"], f"{field}.text", parts + ("text",), loc, shown)
    note = _text_field(item, "note", f"{field}.note", parts + ("note",), loc, shown)
    tags = _tags(item.get("tags"), f"{field}.tags", parts + ("tags",), loc, shown)
    return Prompt(set_id=set_id, id=prompt_id, text=text, note=note, tags=tags)


def _prompt_id(value: Any, field: str, parts: tuple, loc: _Locator, shown: str) -> str:
    if not isinstance(value, str):
        raise PromptSetError(
            shown,
            field,
            f"must be a string, found {_type_name(value)}",
            f"put the id in quotes or use a slug of {_ID_RULE}, e.g. 'capital-of-france'",
            line=loc.line(*parts),
        )
    if not PROMPT_ID_RE.match(value):
        raise PromptSetError(
            shown,
            field,
            f"{value!r} is not a valid prompt id",
            f"use {_ID_RULE}, e.g. {_suggest_id(value)!r}",
            line=loc.line(*parts),
        )
    return value


def _prompt_text(value: Any, field: str, parts: tuple, loc: _Locator, shown: str) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PromptSetError(
            shown,
            field,
            f"must be a string, found {_type_name(value)}",
            "put the text in quotes (YAML reads bare numbers, dates, true/false and null as other "
            "types) or use a block scalar (text: |)",
            line=loc.line(*parts),
        )
    if not value.strip():
        raise PromptSetError(
            shown,
            field,
            "text is empty or only whitespace",
            "write the prompt text the models should continue",
            line=loc.line(*parts),
        )
    if len(value) > MAX_PROMPT_CHARS:
        raise PromptSetError(
            shown,
            field,
            f"text is {len(value)} characters long, more than the limit of {MAX_PROMPT_CHARS}",
            f"shorten the prompt to at most {MAX_PROMPT_CHARS} characters (a few pages; a "
            "2,048-token prompt is about 9,000 characters of English), e.g. keep the passage "
            "the question is about",
            line=loc.line(*parts),
        )
    return value


def _tags(value: Any, field: str, parts: tuple, loc: _Locator, shown: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PromptSetError(
            shown,
            field,
            f"must be a list of strings, found {_type_name(value)}",
            "write tags as a list, e.g. tags: [repetition, names]",
            line=loc.line(*parts),
        )
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag.strip():
            raise PromptSetError(
                shown,
                f"{field}[{i}]",
                f"each tag must be a non-empty string, found {_type_name(tag)}",
                "write tags as short words, e.g. tags: [repetition, names]",
                line=loc.line(*parts, i),
            )
    return tuple(value)


def _check_unique_prompt_ids(prompts: tuple[Prompt, ...], loc: _Locator, shown: str) -> None:
    first: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        if prompt.id in first:
            raise PromptSetError(
                shown,
                f"prompts[{i}].id",
                f"duplicate prompt id {prompt.id!r}: prompts[{first[prompt.id]}] and prompts[{i}] "
                "both use it",
                "give each prompt in the set its own id",
                line=loc.line("prompts", i, "id"),
            )
        first[prompt.id] = i


# --- helpers ---------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, str) and not value.strip():
        return "an empty string"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return f"{name} ({_short_repr(value)})" if kind not in (list, dict) else name
    return f"a {type(value).__name__} ({_short_repr(value)})"


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _suggest_id(value: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:64].rstrip("-")
    return slug or "my-prompt"
