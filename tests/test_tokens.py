"""Tests for generator/tokens.py with the genuine GPT-2 and Qwen2.5 tokenizers: known ids, partial
UTF-8 pieces shown as bytes, token bytes that add up to the prompt, and offsets into the prompt."""

from __future__ import annotations

import pytest

from generator.demo import load_real_tokenizer
from generator.tokens import (_byte_decoder, describe_tokens, display, entry_bytes, preload_vocab,
                              token_bytes, vocab_entries)


@pytest.fixture(scope="module")
def tokenizers():
    return {"gpt2": load_real_tokenizer("gpt2"), "qwen2.5": load_real_tokenizer("qwen2.5")}


@pytest.mark.parametrize("name, text, ids", [
    ("gpt2", "Hello world", [15496, 995]),
    ("gpt2", " the", [262]),
    ("qwen2.5", "Hello world", [9707, 1879]),
    ("qwen2.5", " the", [279]),
])
def test_real_tokenizers_give_known_ids(tokenizers, name, text, ids):
    got, records = describe_tokens(tokenizers[name], text)
    assert got == ids
    assert [r["id"] for r in records] == ids
    assert "".join(r["text"] for r in records) == text
    assert not any(r["special"] for r in records)


def test_real_tokenizer_sizes(tokenizers):
    assert len(tokenizers["gpt2"]) == 50257
    # 151,643 regular tokens plus the special ones.
    assert len(tokenizers["qwen2.5"]) > 151643


MIXED = [
    "巴黎 and 巴",
    "Hello world",
    "The Eiffel Tower is in Paris.",
    "🙂🇫🇷 naïve café — ok",
    "def f(x):\n    return x  # ←\t tab",
    "Привет, мир! مرحبا नमस्ते 안녕하세요",
]


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5"])
@pytest.mark.parametrize("text", MIXED)
def test_token_bytes_concatenate_to_the_text(tokenizers, name, text):
    ids, records = describe_tokens(tokenizers[name], text)
    assert len(ids) == len(records) >= 1
    joined = b"".join(bytes.fromhex(r["bytes"]) for r in records)
    assert joined == text.encode("utf-8")
    assert [bytes.fromhex(r["bytes"]) for r in records] == token_bytes(tokenizers[name], ids)


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5"])
@pytest.mark.parametrize("text", MIXED)
def test_offsets_point_into_the_text(tokenizers, name, text):
    _, records = describe_tokens(tokenizers[name], text)
    previous_start = 0
    for r in records:
        assert 0 <= r["start"] < r["end"] <= len(text), r
        assert r["start"] >= previous_start, "offsets go backwards"
        previous_start = r["start"]
        covered = text[r["start"]:r["end"]]
        raw = bytes.fromhex(r["bytes"])
        if r["text"] is not None:
            # A whole token covers exactly its text (byte-level BPE keeps leading spaces).
            assert covered == r["text"], r
        else:
            # A partial piece lies inside the characters its offsets cover.
            assert raw in covered.encode("utf-8"), (r, covered)
    assert records[0]["start"] == 0 and records[-1]["end"] == len(text)


def test_qwen_partial_utf8_pieces_are_bytes(tokenizers):
    text = "巴黎 and 巴"
    ids, records = describe_tokens(tokenizers["qwen2.5"], text)
    assert ids[0] == 106004 and records[0]["text"] == "巴黎"  # one token for the word Paris
    partial = [r for r in records if r["text"] is None]
    # The lone "巴" is split over two tokens: " " + e5 b7, then b4.
    assert [r["bytes"] for r in partial] == ["20e5b7", "b4"]
    for r in partial:
        raw = bytes.fromhex(r["bytes"])
        assert r["bytes"] == raw.hex()  # lowercase, two digits per byte
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    for r in records:
        if r["text"] is not None:
            assert r["text"].encode("utf-8") == bytes.fromhex(r["bytes"])


def test_gpt2_splits_cjk_into_byte_pieces(tokenizers):
    _, records = describe_tokens(tokenizers["gpt2"], "巴黎")
    assert len(records) > 2
    assert any(r["text"] is None for r in records)
    assert b"".join(bytes.fromhex(r["bytes"]) for r in records) == "巴黎".encode("utf-8")


def test_display_marks_incomplete_utf8():
    assert display("巴".encode("utf-8")) == ("巴", "e5b7b4")
    assert display(b"\xe5\xb7") == (None, "e5b7")
    assert display(b"") == ("", "")


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5"])
def test_special_tokens_are_marked(tokenizers, name):
    tok = tokenizers[name]
    ids, records = describe_tokens(tok, "a<|endoftext|>b")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert eos in ids
    special = [r for r in records if r["special"]]
    assert [r["id"] for r in special] == [eos]
    assert special[0]["text"] == "<|endoftext|>"


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5"])
def test_vocab_entries_keyed_by_id(tokenizers, name):
    tok = tokenizers[name]
    ids, records = describe_tokens(tok, "Hello world 巴")
    entries = vocab_entries(tok, ids + ids[:1])
    assert set(entries) == {str(i) for i in ids}
    for r in records:
        # The bytes are stored only where they are not complete UTF-8 (Qwen2.5 splits "巴").
        entry = entries[str(r["id"])]
        expected = {"text": r["text"]} if r["text"] is not None else {"text": None,
                                                                       "bytes": r["bytes"]}
        assert entry == expected
        assert entry_bytes(entry) == r["bytes"]
    if name == "qwen2.5":
        assert any(e["text"] is None for e in entries.values()), "no partial-character token"


@pytest.mark.parametrize("name", ["gpt2", "qwen2.5"])
def test_preloaded_vocabulary_records_are_the_per_id_ones(tokenizers, name):
    """preload_vocab makes every id's record at once (the compute stage does it when it loads a
    model); a record is the same as one made for that id alone, through the byte table one
    character at a time, and a second preload makes nothing."""
    tok = tokenizers[name]
    assert 0 <= preload_vocab(tok) <= len(tok)
    assert preload_vocab(tok) == 0
    table, special = _byte_decoder(), set(tok.all_special_ids)
    ids = list(range(0, len(tok), 97)) + sorted(special)
    records = vocab_entries(tok, ids)
    for tid, piece in zip(ids, tok.convert_ids_to_tokens(ids)):
        raw = (piece.encode("utf-8") if tid in special or any(ch not in table for ch in piece)
               else bytes(table[ch] for ch in piece))
        assert entry_bytes(records[str(tid)]) == raw.hex()
