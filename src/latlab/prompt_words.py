"""Prompts of an exact token length in the *target's* tokens, and the salt that keeps them unique.

A prompt is a string of words, each exactly one token after a space in the target's tokenizer,
so ``n`` words plus the tokens the target adds to every prompt (its BOS token, a chat
template: the *offset*) are exactly ``n + offset`` tokens. Which words qualify is found by
group testing: a group of ``g`` candidate words whose text counts ``offset + g`` tokens holds
only one-token words (words never merge across a space); a group that counts more is split in
halves. The count comes from a local tokenizer, or from the server itself (its ``/tokenize``
endpoint or the ``usage.prompt_tokens`` of one-token probe requests, see bench/calibrate.py):
one algorithm, driven synchronously or asynchronously.

A :class:`Salt` puts a few of these words, derived from a per-run value and the request id, at
the front of every prompt: a server's prefix cache (on by default in vLLM and latlab serve)
then never serves a later level, repeat or run from the entries of an earlier one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from latlab.errors import ConfigError

# Words at the front of each prompt that make it unique. Six words from even a small list of
# one-token words (64) give 7e10 tags: no two requests of a run share one.
TAG_WORDS = 6
_GROUP = 16  # candidate words tested together
# One-token words to find: plenty for random prompts and unique tags. Fewer when each count
# is a request to the server (about 40 probes against a 4k-token vocabulary).
WANT_LOCAL, WANT_REMOTE = 256, 64
_MIN_WORDS = 16  # fewer than this: calibration failed

# Common English words: about one token each in most tokenizers, and the candidates tested
# when no local tokenizer can list its vocabulary.
_COMMON = """the of and to in is it you that he was for on are with as his they be at one have this
from or had by word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green quick develop ocean
warm free minute strong special mind behind clear tail produce fact street inch multiply nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape
equate hot miss brought heat snow tire bring yes distant fill east paint language among"""
COMMON_WORDS = tuple(_COMMON.split())


def words_text(words: Sequence[str]) -> str:
    """The prompt text of ``words``: each after a space, so each is one token in context."""
    return "".join(" " + w for w in words)


@dataclass(kw_only=True, slots=True, frozen=True)
class PromptWords:
    """One-token words and the tokens a target adds to every prompt.

    ``exact`` is True when the words and the offset were measured in the target's own tokens
    (then an ``n``-token prompt counts exactly ``n``); otherwise the words are common English
    words of about one token each and nothing is known about the true count.
    """

    words: tuple[str, ...]
    offset: int = 0
    exact: bool = False
    source: str = "uncalibrated"  # "tokenizer", "server /tokenize", "server usage"
    probes: int = 0  # texts counted to find the words

    def __post_init__(self) -> None:
        if not self.words:
            raise ConfigError("a prompt needs at least one word to be built from")

    def text(self, rng: random.Random, n_words: int) -> str:
        """``n_words`` random words (exactly that many tokens when ``exact``)."""
        return words_text([rng.choice(self.words) for _ in range(n_words)])

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "exact": self.exact, "offset": self.offset,
                "words": len(self.words), "probes": self.probes}  # fmt: skip


UNCALIBRATED = PromptWords(words=COMMON_WORDS)


@dataclass(kw_only=True, slots=True, frozen=True)
class Salt:
    """Per-request tags at the front of each prompt, derived from a per-run value.

    The tag of a request is ``TAG_WORDS`` words picked by a hash of the run's salt and the
    request id: unique within a run (request ids are), different across runs (salts are),
    and reproducible (``--salt`` with the value the result JSON records).
    """

    value: str
    words: tuple[str, ...]

    def tag(self, key: str, n_words: int = TAG_WORDS) -> str:
        digest = hashlib.blake2b(f"{self.value}/{key}".encode(), digest_size=16).digest()
        code, picked = int.from_bytes(digest, "big"), []
        for _ in range(n_words):
            code, i = divmod(code, len(self.words))
            picked.append(self.words[i])
        return words_text(picked)


# ---------------------------------------------------------------------------- calibration

# A counter takes texts and returns their token counts as the target counts a prompt (BOS and
# chat template included).
SyncCount = Callable[[list[str]], list[int]]
AsyncCount = Callable[[list[str]], Awaitable[list[int]]]
_Search = Generator[list[str], list[int], tuple[tuple[str, ...], int, int]]


def _search(candidates: Sequence[str], want: int) -> _Search:
    """Group testing: yields texts to count, receives their counts, returns (words, offset,
    texts counted). Groups grow while most candidates turn out to be one token (a large
    vocabulary) and shrink to single words when few are (a small one)."""
    offset, probes = None, 0
    for w in candidates[:32]:  # the offset: c(" w w") - c(" w") = 1 for a one-token word
        counts = yield [words_text([w]), words_text([w, w])]
        probes += 2
        if counts[1] - counts[0] == 1:
            offset = counts[0] - 1
            break
    if offset is None:
        raise ConfigError("no candidate word counts as one token: cannot calibrate lengths")
    found: list[str] = []
    split: list[list[str]] = []  # failed groups, halved
    rest, tested = list(candidates), 0
    while (split or rest) and len(found) < want:
        share = len(found) / tested if tested else 0.9
        size = 16 if share > 0.9 else 8 if share > 0.8 else 4 if share > 0.6 else 1
        batch = split[:8]
        split = split[8:]
        while len(batch) < 8 and rest:
            batch.append(rest[:size])
            tested += len(batch[-1])
            rest = rest[size:]
        counts = yield [words_text(g) for g in batch]
        probes += len(batch)
        for group, count in zip(batch, counts, strict=True):
            if count == offset + len(group):
                found.extend(group)
            elif len(group) > 1:
                split += [group[: len(group) // 2], group[len(group) // 2 :]]
    return tuple(sorted(set(found))), offset, probes


def _result(done: tuple[tuple[str, ...], int, int], source: str) -> PromptWords:
    words, offset, probes = done
    if len(words) < _MIN_WORDS:
        raise ConfigError(
            f"only {len(words)} candidate words count as one token in this tokenizer; "
            "cannot build prompts of exact length"
        )
    return PromptWords(words=words, offset=offset, exact=True, source=source, probes=probes)


def calibrate_sync(
    count: SyncCount, candidates: Sequence[str], source: str, want: int = WANT_LOCAL
) -> PromptWords:
    """Find one-token words with a synchronous counter (a local tokenizer)."""
    search = _search(candidates, want)
    try:
        texts = next(search)
        while True:
            texts = search.send(count(texts))
    except StopIteration as stop:
        return _result(stop.value, source)


async def calibrate_async(
    count: AsyncCount, candidates: Sequence[str], source: str, want: int = WANT_REMOTE
) -> PromptWords:
    """Find one-token words with an asynchronous counter (the server)."""
    search = _search(candidates, want)
    try:
        texts = next(search)
        while True:
            texts = search.send(await count(texts))
    except StopIteration as stop:
        return _result(stop.value, source)


def vocabulary_words(tokenizer: Any, seed: int = 0) -> list[str]:
    """Candidate words from a tokenizer's vocabulary: pieces of a space and ASCII letters,
    shuffled (seeded) so the words found are spread over the vocabulary."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    words = sorted(
        piece[1:]
        for piece in vocab
        if len(piece) > 2 and piece[0] in ("Ġ", "▁") and piece[1:].isascii()
        and piece[1:].isalpha()
    )  # fmt: skip
    random.Random(seed).shuffle(words)
    return words[:4096] or list(COMMON_WORDS)


def from_tokenizer(tokenizer: Any) -> PromptWords:
    """One-token words of a local tokenizer, counted as a target encodes a prompt (BOS
    included), so in-process targets and ``--tokenizer`` get exact lengths."""

    def count(texts: list[str]) -> list[int]:
        return [len(tokenizer.encode(t)) for t in texts]

    return calibrate_sync(count, vocabulary_words(tokenizer), "tokenizer")
