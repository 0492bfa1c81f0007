"""Incremental detokenisation never emits half a UTF-8 character and trims stop strings."""

from __future__ import annotations

from latlab.engine.detokenizer import IncrementalDetokenizer


class ByteTokenizer:
    """Token id = one byte, like byte-fallback tokens of real BPE vocabularies."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def _stream(text: str, stop: list[str] | None = None) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(ByteTokenizer(), list(b"ab"), stop or [])
    deltas = []
    for token in text.encode("utf-8"):
        stopped = detok.append(token)
        deltas.append(detok.take_new_text(stopped))
        if stopped:
            break
    return deltas, detok


def test_multibyte_characters_are_never_split():
    text = "héllo 世界 🙂!"
    deltas, detok = _stream(text)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.take_new_text(True) == text
    # the 4-byte emoji shows up in one piece, at its last byte
    assert "🙂" in deltas


def test_stop_string_trimmed_and_held_back_while_streaming():
    deltas, detok = _stream("say STOP now", stop=["STOP"])
    assert detok.text == "say "
    assert "".join(deltas) == "say "
    assert all("S" not in d for d in deltas)


def test_partial_stop_string_is_released_when_it_is_not_a_stop():
    deltas, detok = _stream("a STORM", stop=["STOP"])
    assert "".join(deltas) + detok.take_new_text(True) == "a STORM"


def test_real_tokenizer_multibyte_roundtrip():
    from latlab.model_files import load_tokenizer

    tok = load_tokenizer(None)
    text = "naïve café — 世界 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], [])
    deltas = []
    for t in ids:
        detok.append(t)
        deltas.append(detok.take_new_text(False))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.take_new_text(True) == tok.decode(ids, skip_special_tokens=True)


def test_fast_tokenizers_decode_through_their_backend_with_the_same_text():
    from latlab.engine.detokenizer import text_decoder
    from latlab.model_files import load_tokenizer

    tok = load_tokenizer(None)
    calls = []
    real_decode = tok.decode
    tok.decode = lambda *a, **k: calls.append(a) or real_decode(*a, **k)
    ids = tok.encode("naïve café — 世界 🙂 <s> done", add_special_tokens=False)
    ids += [tok.eos_token_id or 0]  # a special token, skipped by both
    decode = text_decoder(tok)
    texts = [decode(ids[:n]) for n in range(len(ids) + 1)]
    assert calls == []  # the backend answered, not transformers' wrapper
    assert texts == [real_decode(ids[:n], skip_special_tokens=True) for n in range(len(ids) + 1)]
    tok.clean_up_tokenization_spaces = True  # a clean-up only transformers' decode does
    text_decoder(tok)(ids)
    assert len(calls) == 1
    assert text_decoder(ByteTokenizer())(list(b"ok")) == "ok"  # any object with decode()
