"""Prompts a model cannot hold: the record the compute stage writes instead of an artifact.

A prompt longer than one model's context (its tokens and the generated continuation together) is
computed for the models that can hold it. For the other model the compute stage writes a small
skip record where the artifact would be (`layout.skip_record_path`): the prompt's token count, the
continuation it would have generated and the model's context length. The build goes on; the
render stage reads the record and the prompt page's column for that model says why
(`SkipRecord.message`), e.g. "1,731 tokens: longer than gpt2's context of 1,024".

A record carries the prompt's unit key (`compute.unit_key`), so a rebuild reuses it as it reuses a
current artifact, and the SHA-256 of the prompt's text, so render can tell a record made for
another text. Writing an artifact removes the record, and writing a record removes the artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .store import atomic_write_text

KIND = "model-atlas-skip"
FIELDS = ("kind", "key", "model_id", "model_slug", "set", "prompt", "prompt_sha256", "tokens",
          "continuation", "context_length")


@dataclass(frozen=True)
class SkipRecord:
    """Why one model has no artifact for one prompt: the prompt does not fit its context."""
    key: str                # the unit key (schema version, model, prompt text, settings)
    model_id: str
    model_slug: str
    set: str
    prompt: str
    prompt_sha256: str
    tokens: int             # the prompt's tokens for this model's tokenizer
    continuation: int       # greedy tokens the build generates after the prompt
    context_length: int     # positions the model can hold
    kind: str = KIND

    @property
    def message(self) -> str:
        """What the prompt page says in the model's column."""
        model, context = self.model_id, f"{self.context_length:,}"
        if self.tokens > self.context_length:
            return f"{self.tokens:,} tokens: longer than {model}'s context of {context}"
        return (f"{self.tokens:,} tokens and {self.continuation} generated: longer than "
                f"{model}'s context of {context}")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


def fits(tokens: int, continuation: int, context_length: int | None) -> bool:
    """Whether a prompt of `tokens` tokens and its continuation fit a model's context."""
    return context_length is None or tokens + continuation <= context_length


def write_skip(path: Path, record: SkipRecord) -> None:
    """The record at `path`, written atomically (one line of JSON)."""
    atomic_write_text(path, json.dumps(record.to_dict(), sort_keys=True) + "\n", durable=False)


def read_skip(path: Path) -> SkipRecord:
    """The record at `path`, checked: every field present and of its type."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable skip record ({e}). Run `model-atlas compute` "
                            f"to write it again.") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or set(data) != set(FIELDS):
        raise ArtifactError(f"{path}: not a skip record of this version (fields "
                            f"{', '.join(FIELDS)}). Run `model-atlas compute` to write it again.")
    counts = ("tokens", "continuation", "context_length")
    if not all(isinstance(data[n], int) and data[n] >= 0 for n in counts) or not all(
            isinstance(data[n], str) for n in FIELDS if n not in counts):
        raise ArtifactError(f"{path}: a skip record's counts must be whole numbers and its names "
                            f"text. Run `model-atlas compute` to write it again.")
    return SkipRecord(**{n: data[n] for n in FIELDS if n != "kind"})


def current_key(path: Path) -> str | None:
    """The key of the record at `path`, or None if there is none or it cannot be read."""
    try:
        return read_skip(path).key
    except ArtifactError:
        return None


__all__ = ["SkipRecord", "current_key", "fits", "read_skip", "write_skip"]
