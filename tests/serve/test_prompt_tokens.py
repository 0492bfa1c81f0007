"""Counting a prompt's tokens in pieces (latlab.serve.prompt_tokens) and its use by the app.

The cuts must never change a token: for random texts (words, runs of spaces and newlines,
unicode, the vocabulary's 93-character run of dashes, the special tokens, half of one), the
pieces' tokens one after another are the whole text's, with the bundled tokenizer and with
small byte-level BPEs trained on the cl100k / Llama 3 and Qwen2 split regexes. Through the app:
the 1,024-message chat of benchmarks/serve_hostile.py is refused after tokenizing a tenth of it,
a prompt that fits runs with the whole text's ids, and /tokenize stays exact.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from latlab.model_files import load_tokenizer
from latlab.serve.app import create_app
from latlab.serve.prompt_tokens import (
    CHARS_PER_TOKEN,
    GPT2_SPLIT,
    KNOWN_SPLITS,
    Cutter,
    count_past,
    cutter_for,
)
from latlab.serve.server import running_server
from serve.fake_engine import MODEL, FakeEngine, FakeParams, FakeTokenizer

BUNDLED = Path(__file__).resolve().parents[2] / "src" / "latlab" / "assets" / "tiny-llama"
SPECIALS = ["<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
CHAT_1024 = [{"role": "user", "content": "word " * 20}] * 1024  # benchmarks/serve_hostile.py


def _trained(split: str, normalizer: normalizers.Normalizer | None) -> PreTrainedTokenizerFast:
    """A 600-token byte-level BPE with ``split`` as its regex, trained in ~0.1 s."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # ".\n" and "!\r\n" become tokens: the regexes' one match of a non-space and whitespace.
    text = "the quick brown fox's 12345 jumps.\n -- over ----- lazy!\r\n\n dogs,\n\t"
    corpus = [text * 20, "-" * 300]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>")


@pytest.fixture(scope="module")
def bundled():
    return load_tokenizer(str(BUNDLED))


@pytest.fixture(scope="module", params=["bundled", "cl100k", "qwen2-nfc"])
def tokenizer(request, bundled):
    if request.param == "bundled":
        return bundled
    cl100k, qwen2 = sorted(KNOWN_SPLITS, key=len, reverse=True)
    if request.param == "cl100k":
        return _trained(cl100k, None)
    return _trained(qwen2, normalizers.NFC())


FRAGMENTS = st.one_of(
    st.sampled_from(["word", "The", "fox's", "12345", "café", "日本語", "🙂", ".", ",!?", "'s"]),
    st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n", "\r\n", "\u00a0", "\u3000"]),
    st.integers(1, 200).map(lambda n: "-" * n),  # the bundled vocabulary has a 93-dash token
    st.sampled_from([*SPECIALS, "<|us", "er|>", "<|", "|>"]),
    st.text(max_size=8),
)
TEXTS = st.lists(FRAGMENTS, max_size=40).map("".join)


def _every_piece(tokenizer, cutter: Cutter, text: str) -> list[int]:
    """The text cut at every cut it has, each piece tokenized alone, the ids joined."""
    cuts, ids, start = cutter.cuts(text), [], 0
    while start < len(text):
        end = cuts.at_or_after(start + 1)
        ids += tokenizer.encode(text[start:end], add_special_tokens=False)
        start = end
    return ids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_the_pieces_tokens_are_the_whole_texts(tokenizer, text):
    cutter = cutter_for(tokenizer)
    assert cutter is not None
    assert _every_piece(tokenizer, cutter, text) == tokenizer.encode(text, add_special_tokens=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, limit=st.integers(0, 60), special=st.booleans(), piece=st.integers(1, 40))
def test_over_the_limit_only_when_the_whole_text_is(bundled, text, limit, special, piece):
    cutter = cutter_for(bundled)
    full = len(bundled.encode(text, add_special_tokens=special))
    counted = count_past(bundled, cutter, text, limit,
                         add_special_tokens=special, min_piece=piece)  # fmt: skip
    if counted is not None:
        assert full >= counted > limit
    elif full > limit:  # not counted: only a text too short to cut, left to the whole encode
        first = max(piece, CHARS_PER_TOKEN * (limit + 1 - special))
        assert cutter.cuts(text).at_or_after(first) == len(text)


def test_a_long_text_is_counted_only_past_the_limit(bundled):
    text = bundled.apply_chat_template(CHAT_1024, tokenize=False, add_generation_prompt=True)
    full = len(bundled.encode(text, add_special_tokens=False))  # 24,579
    counted = count_past(bundled, cutter_for(bundled), text, 2047, add_special_tokens=False)
    assert counted is not None and 2047 < counted < 4096 < full
    cutter = cutter_for(bundled)
    assert count_past(bundled, cutter, text, full, add_special_tokens=False) is None
    assert count_past(bundled, cutter, text, full - 1, add_special_tokens=False) == full


def _with_added(**flags) -> PreTrainedTokenizerFast:
    tok = _trained(GPT2_SPLIT, None)
    tok.add_tokens([AddedToken("<x>", **flags)])
    return tok


def test_no_cutter_where_the_cuts_are_not_known_to_keep_tokens(bundled):
    assert cutter_for(bundled) is not None
    assert cutter_for(FakeTokenizer()) is None  # not a fast tokenizer
    assert cutter_for(_trained(GPT2_SPLIT, None)) is not None
    assert cutter_for(_with_added(rstrip=True)) is None  # eats the space a cut is put before
    assert cutter_for(_trained(r"\s+", None)) is None  # a split regex nobody checked
    lowercase = _trained(GPT2_SPLIT, normalizers.Lowercase())
    assert cutter_for(lowercase) is None
    metaspace = Tokenizer(models.BPE())
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    assert cutter_for(PreTrainedTokenizerFast(tokenizer_object=metaspace)) is None


# ---- through the app --------------------------------------------------------------------------


class CountingTokenizer:
    """The bundled tokenizer, counting the characters it is asked to encode."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.backend_tokenizer = inner.backend_tokenizer
        self.chars = 0
        self._lock = threading.Lock()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._lock:
            self.chars += len(text)
        return self._inner.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)


@pytest.fixture(scope="module")
def served(bundled):
    tokenizer = CountingTokenizer(bundled)
    engine = FakeEngine(max_model_len=2048, num_kv_blocks=1024, tokenizer=tokenizer)  # type: ignore[arg-type]
    with running_server(create_app(engine, MODEL, make_params=FakeParams)) as url:
        yield url, tokenizer


def test_a_chat_far_past_the_context_is_refused_after_a_tenth_of_it(served, bundled):
    url, tokenizer = served
    tokenizer.chars = 0
    body = {"messages": CHAT_1024, "max_tokens": 1}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "maximum context length is 2048 tokens; the prompt has at least" in error["message"]
    rendered = bundled.apply_chat_template(CHAT_1024, tokenize=False, add_generation_prompt=True)
    assert tokenizer.chars < len(rendered) / 5  # 12,295 of 118,805 characters
    r = httpx.post(f"{url}/tokenize", json={"messages": CHAT_1024}, timeout=30)
    assert r.json()["count"] == 24_579  # /tokenize stays exact, as vLLM's


def test_a_long_prompt_that_fits_runs_with_the_whole_texts_ids(served, bundled):
    url, _ = served
    messages = CHAT_1024[:80]  # 9,301 characters, 1,923 tokens: cut into pieces, and it fits
    r = httpx.post(f"{url}/tokenize", json={"messages": messages}, timeout=30)
    ids = r.json()["tokens"]
    text = bundled.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == bundled.encode(text, add_special_tokens=False) and len(ids) == 1923
    body = {"messages": messages, "max_tokens": 1}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1923


def test_a_completion_prompt_past_the_context_names_the_prompt(served):
    url, tokenizer = served
    tokenizer.chars = 0
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "word " * 4000}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"
    assert tokenizer.chars < 20_000
