"""What each token covers: its bytes, the text it shows, and where it sits in the prompt.

Byte-level BPE (GPT-2, Qwen2.5) can split one character over several tokens: Qwen2.5 writes "巴" as
two tokens. Such a piece is not valid UTF-8 on its own, so it is shown honestly as bytes (`<e5 b7>`)
rather than as mojibake. Character offsets come from the tokenizer's own offset mapping, so they
point into the prompt as written.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import Any, Sequence


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's `bytes_to_unicode` table, shared by every byte-level BPE tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def _byte_translation() -> tuple[dict[int, int], re.Pattern[str]]:
    """`_byte_decoder` for `str.translate` (each piece converted in C, not a character at a time),
    and a pattern that finds a character outside the table."""
    table = _byte_decoder()
    return ({ord(ch): b for ch, b in table.items()},
            re.compile("[^" + re.escape("".join(table)) + "]"))


def is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """The raw bytes each token id stands for."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if is_byte_level(tokenizer):
        table, foreign = _byte_translation()
        out = []
        for tid, piece in zip(ids, pieces):
            if piece is None:  # ids past the tokenizer (embedding rows kept as padding)
                out.append(b"")
            elif tid in special or foreign.search(piece):
                out.append(piece.encode("utf-8"))
            else:
                out.append(piece.translate(table).encode("latin-1"))
        return out
    return [tokenizer.decode([tid]).encode("utf-8") for tid in ids]


def display(raw: bytes) -> tuple[str | None, str]:
    """(text, hex): text is None when the bytes are not a complete UTF-8 sequence."""
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return text, raw.hex()


def describe_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[dict[str, Any]]]:
    """Tokenize `text` exactly as the model sees it; return the ids and one record per token."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(enc["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    records = []
    for tid, raw, (start, end) in zip(ids, token_bytes(tokenizer, ids), enc["offset_mapping"]):
        shown, hexed = display(raw)
        records.append({
            "id": int(tid), "text": shown, "bytes": hexed, "start": int(start), "end": int(end),
            "special": tid in special,
        })
    return ids, records


def describe_ids(tokenizer: Any, ids: Sequence[int], offset: int) -> list[dict[str, Any]]:
    """Records for generated tokens; they lie after the prompt, so start = end = `offset`."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    records = []
    for tid, raw in zip(ids, token_bytes(tokenizer, ids)):
        shown, hexed = display(raw)
        records.append({"id": int(tid), "text": shown, "bytes": hexed, "start": offset,
                        "end": offset, "special": tid in special, "generated": True})
    return records


def vocab_entries(tokenizer: Any, ids: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Display records for predicted token ids, keyed by id as a string (JSON object keys):
    {"text": ...} when the token's bytes are complete UTF-8 (they are then the text's UTF-8), else
    {"text": None, "bytes": hex}. An artifact refers to hundreds of predicted ids; the hex of
    every decodable one would be a third of the artifact's JSON after gzip for nothing.

    Records are made once per tokenizer and id (`_vocab_cache`): the compute stage makes all of
    them when it loads a model (`preload_vocab`), so the writer only looks them up."""
    unique = sorted(set(map(int, ids)))
    cache = _cached_records(tokenizer, unique)
    # Shared records: callers must not edit them.
    return dict(zip(map(str, unique), map(cache.__getitem__, unique)))


def preload_vocab(tokenizer: Any) -> int:
    """Make the display record of every id of the tokenizer's vocabulary at once (about 0.2 s for
    Qwen2.5's 151,665), so that no artifact's vocab waits for the tokenizer. Returns how many were
    made (0: all were there)."""
    before = len(_vocab_cache.get(id(tokenizer), (None, {}))[1])
    if before >= len(tokenizer):
        return 0
    return len(_cached_records(tokenizer, range(len(tokenizer)))) - before


def _cached_records(tokenizer: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The tokenizer's record cache, with a record for each of `ids` (made where missing)."""
    cache = _vocab_cache.setdefault(id(tokenizer), (tokenizer, {}))[1]
    missing = list(itertools.filterfalse(cache.__contains__, ids))
    for tid, raw in zip(missing, token_bytes(tokenizer, missing) if missing else ()):
        shown, hexed = display(raw)
        cache[tid] = {"text": shown} if shown is not None else {"text": None, "bytes": hexed}
    return cache


# id(tokenizer) -> (tokenizer, {token id: record}); the tokenizer is kept so that its id is not
# reused by another object while the cache holds records made from it.
_vocab_cache: dict[int, tuple[Any, dict[int, dict[str, Any]]]] = {}


def entry_bytes(entry: dict[str, Any]) -> str:
    """The hex of a vocab entry's bytes (stored only when they are not complete UTF-8)."""
    return entry["bytes"] if entry.get("text") is None else entry["text"].encode("utf-8").hex()
