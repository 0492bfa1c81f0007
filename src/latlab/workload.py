"""What to send and when: prompt sources, length distributions, arrival processes.

Synthetic prompts are built with the *target's* tokenizer so the input length is exact, not a
word-count guess; without a tokenizer (a remote server whose tokenizer is not at hand) prompts
are common words, about one token each, and the server's ``usage`` gives the true count.
Every random choice goes through one ``random.Random(seed)`` so a run can be repeated.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

DATASET_HELP = "synthetic | jsonl:FILE | sharegpt:FILE | shared-prefix"
_WORDS = ("the", "time", "people", "way", "year", "work", "day", "world", "life", "hand", "place")


@dataclass(slots=True)
class BenchRequest:
    """One request to send: a prompt (text or token ids) and how many tokens to ask for."""

    prompt: str | list[int]
    max_tokens: int
    prompt_tokens: int | None = None  # exact when measured with the target's tokenizer
    request_id: str = ""
    messages: list[dict[str, str]] | None = None  # chat datasets keep their turns


# ---------------------------------------------------------------------------- lengths


@dataclass(slots=True, frozen=True)
class LengthDist:
    """A token-length distribution: ``128``, ``uniform:64:256`` or ``normal:128:32``."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str | int, what: str = "length") -> LengthDist:
        if isinstance(spec, int):
            spec = str(spec)
        parts = str(spec).strip().split(":")
        try:
            if len(parts) == 1:
                dist = cls("fixed", float(int(parts[0])))
            elif parts[0] == "uniform" and len(parts) == 3:
                dist = cls("uniform", float(int(parts[1])), float(int(parts[2])))
            elif parts[0] == "normal" and len(parts) == 3:
                dist = cls("normal", float(parts[1]), float(parts[2]))
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"bad {what} {spec!r}: use N, uniform:LO:HI or normal:MEAN:STD (tokens)"
            ) from None
        dist._validate(what, spec)
        return dist

    def _validate(self, what: str, spec: str) -> None:
        if self.a < 1 or (self.kind == "uniform" and self.b < self.a) or self.b < 0:
            raise ConfigError(f"bad {what} {spec!r}: lengths must be >= 1 and LO <= HI")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        return f"{self.kind}:{self.a:g}:{self.b:g}"


# ---------------------------------------------------------------------------- prompt text


class PromptMaker:
    """Builds text of an exact token length with a tokenizer (or about that many words)."""

    def __init__(self, tokenizer: Any | None, rng: random.Random) -> None:
        self.tok = tokenizer
        self.rng = rng
        self._ids = _plain_word_ids(tokenizer) if tokenizer is not None else []

    def count(self, text: str) -> int | None:
        if self.tok is None:
            return None
        return len(self.tok.encode(text, add_special_tokens=False))

    def text(self, n: int) -> tuple[str, int | None]:
        if self.tok is None or not self._ids:
            return " ".join(self.rng.choice(_WORDS) for _ in range(n)), None
        ids = [self.rng.choice(self._ids) for _ in range(n)]
        for _ in range(8):  # re-tokenizing decoded text can merge or split pieces
            text = self.tok.decode(ids)
            got = len(self.tok.encode(text, add_special_tokens=False))
            if got == n:
                return text, n
            if got > n:
                ids = ids[: max(1, len(ids) - (got - n))]
            else:
                ids += [self.rng.choice(self._ids) for _ in range(n - got)]
        text = self.tok.decode(ids)
        return text, self.count(text)


def _plain_word_ids(tokenizer: Any) -> list[int]:
    """Ids of ordinary word pieces (space + letters): they survive decode/encode unchanged."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids = []
    for piece, idx in vocab.items():
        if idx in special or len(piece) < 3:
            continue
        if piece[0] in ("Ġ", "▁") and piece[1:].isalpha() and piece[1:].isascii():
            ids.append(idx)
    return sorted(ids)[:20000]


# ---------------------------------------------------------------------------- datasets


@dataclass(slots=True)
class WorkloadSpec:
    dataset: str = "synthetic"
    input_len: str = "128"
    output_len: str = "128"
    num_prompts: int = 100
    prefix_groups: int = 4
    prefix_len: int = 256
    seed: int = 0


def build_requests(spec: WorkloadSpec, tokenizer: Any | None) -> list[BenchRequest]:
    """The prompts for a run, in send order (the runner cycles through them if it needs more)."""
    if spec.num_prompts < 1:
        raise ConfigError("the number of requests must be >= 1")
    rng = random.Random(spec.seed)
    maker = PromptMaker(tokenizer, rng)
    in_dist = LengthDist.parse(spec.input_len, "--input-len")
    out_dist = LengthDist.parse(spec.output_len, "--output-len")
    ds = spec.dataset
    if ds == "synthetic":
        reqs = _synthetic(spec.num_prompts, in_dist, out_dist, maker)
    elif ds == "shared-prefix":
        reqs = _shared_prefix(spec, in_dist, out_dist, maker)
    elif ds.startswith("jsonl:"):
        reqs = _jsonl(Path(ds[6:]), out_dist, maker)
    elif ds.startswith("sharegpt:"):
        reqs = _sharegpt(Path(ds[9:]), out_dist, maker)
    else:
        raise ConfigError(f"unknown dataset {ds!r}: use {DATASET_HELP}")
    if not reqs:
        raise ConfigError(f"dataset {ds!r} has no usable prompts")
    for i, r in enumerate(reqs):
        r.request_id = f"req-{i}"
    return reqs


def _synthetic(n: int, ind: LengthDist, outd: LengthDist, m: PromptMaker) -> list[BenchRequest]:
    out = []
    for _ in range(n):
        text, count = m.text(ind.sample(m.rng))
        out.append(BenchRequest(text, outd.sample(m.rng), count))
    return out


def _shared_prefix(
    spec: WorkloadSpec, ind: LengthDist, outd: LengthDist, m: PromptMaker
) -> list[BenchRequest]:
    """G groups, each with its own common prefix of P tokens, then a unique suffix."""
    if spec.prefix_groups < 1 or spec.prefix_len < 1:
        raise ConfigError("--prefix-groups and --prefix-len must be >= 1")
    prefixes = [m.text(spec.prefix_len)[0] for _ in range(spec.prefix_groups)]
    out = []
    for i in range(spec.num_prompts):
        suffix, _ = m.text(ind.sample(m.rng))
        text = prefixes[i % spec.prefix_groups] + " " + suffix
        out.append(BenchRequest(text, outd.sample(m.rng), m.count(text)))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read dataset file '{path}': {exc.strerror or exc}") from None


def _jsonl(path: Path, outd: LengthDist, m: PromptMaker) -> list[BenchRequest]:
    """One JSON object a line: ``prompt`` (or ``text``) or chat ``messages``; optional
    ``output_len`` / ``max_tokens``."""
    out = []
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{lineno}: expected an object with a 'prompt' field")
        messages = obj.get("messages")
        prompt = obj.get("prompt", obj.get("text"))
        if isinstance(messages, list) and messages:
            prompt = str(messages[-1].get("content", "")) if prompt is None else prompt
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{path}:{lineno}: needs a non-empty 'prompt' (or 'messages')")
        max_tokens = obj.get("output_len", obj.get("max_tokens")) or outd.sample(m.rng)
        out.append(BenchRequest(prompt, int(max_tokens), m.count(prompt), messages=messages))
    return out


def _sharegpt(path: Path, outd: LengthDist, m: PromptMaker) -> list[BenchRequest]:
    """ShareGPT JSON: a list of ``{"conversations": [{"from": "human", "value": ...}, ...]}``;
    the first human turn is the prompt, the reply's token count the output length."""
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid ShareGPT JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: ShareGPT data must be a JSON list of conversations")
    out = []
    for conv in data:
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        prompt, reply = turns[0].get("value"), turns[1].get("value")
        if turns[0].get("from") not in ("human", "user") or not prompt or not reply:
            continue
        n_reply = m.count(reply)
        max_tokens = n_reply if n_reply else outd.sample(m.rng)
        out.append(BenchRequest(prompt, max(1, max_tokens), m.count(prompt)))
    return out


# ---------------------------------------------------------------------------- arrivals


def arrival_offsets_s(
    rate: float,
    *,
    num_requests: int | None = None,
    duration_s: float | None = None,
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Intended send times (seconds from the start) of an open-loop run.

    Gaps are gamma-distributed with shape ``burstiness`` and mean ``1/rate``: burstiness 1 is a
    Poisson process, below 1 burstier, above 1 more regular. ``rate=inf`` sends all at once.
    """
    if rate <= 0:
        raise ConfigError("--rate must be > 0 (use inf to send everything at once)")
    if burstiness <= 0:
        raise ConfigError("--burstiness must be > 0 (1 = Poisson)")
    if num_requests is None and duration_s is None:
        raise ConfigError("an open-loop run needs a number of requests or a duration")
    if math.isinf(rate) and num_requests is None:
        raise ConfigError("--rate inf sends everything at once: give --num-requests")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while True:
        if num_requests is not None and len(out) >= num_requests:
            break
        if duration_s is not None and t >= duration_s:
            break
        out.append(t)
        if not math.isinf(rate):
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out
