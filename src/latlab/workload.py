"""What to send and when: prompt sources, length distributions, arrival processes.

Synthetic prompts are built from words that are one token each in the *target's* tokenizer
(latlab.prompt_words: measured with a local tokenizer, or on the server itself), so an input
length of ``n`` is ``n`` tokens as the target counts them, BOS and chat template included.
Unless salting is off, every prompt keeps room at its front for a per-request tag (the
runner writes it just before sending), so no two requests of a run, and no two runs, share
a prefix a server could cache; shared-prefix workloads share exactly their prefix, salted
per run. Every random choice goes through one ``random.Random(seed)`` so a run repeats.
"""

from __future__ import annotations

import json
import math
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError
from latlab.prompt_words import TAG_WORDS, UNCALIBRATED, PromptWords, Salt

DATASET_HELP = "synthetic | jsonl:FILE | sharegpt:FILE | shared-prefix"
# A dataset file larger than this is the wrong file (ShareGPT V3 is about 0.7 GB).
MAX_DATASET_BYTES = 4 << 30


@dataclass(slots=True)
class BenchRequest:
    """One request to send: a prompt (text or token ids) and how many tokens to ask for."""

    prompt: str | list[int]
    max_tokens: int
    prompt_tokens: int | None = None  # the requested length, exact when calibrated
    request_id: str = ""
    messages: list[dict[str, str]] | None = None  # chat datasets keep their turns
    salt_at: int | None = None  # where the per-request tag goes (None: never salted)
    salt_words: int = 0  # words of that tag (already counted in prompt_tokens)
    reply: str | None = None  # a recorded reply whose token count is the output length

    def salted(self, tag: str) -> BenchRequest:
        """This request with ``tag`` (leading space included) written at ``salt_at``."""
        if self.salt_at is None or not tag or not isinstance(self.prompt, str):
            return self
        at = self.salt_at
        prompt = self.prompt[:at] + tag + _spaced(self.prompt[at:])
        messages = self.messages
        if messages:
            first = {**messages[0], "content": tag[1:] + _spaced(messages[0]["content"])}
            messages = [first, *messages[1:]]
        return replace(self, prompt=prompt, messages=messages)


def _spaced(text: str) -> str:
    return text if not text or text[0].isspace() else " " + text


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


@dataclass(kw_only=True, slots=True)
class _Maker:
    """What building prompts needs: the words, the salt, and a text counter if there is one."""

    rng: random.Random
    words: PromptWords
    salt: Salt | None
    count_text: Callable[[str], int] | None  # tokens of a text, no special tokens

    @property
    def tag_words(self) -> int:
        return 0 if self.salt is None else TAG_WORDS

    def fill(self, n_tokens: int, flag: str, room: int) -> tuple[int, int]:
        """(tag words, body words) of an ``n_tokens`` part with ``room`` tokens not ours."""
        if self.words.exact and n_tokens - room < 1:
            raise ConfigError(
                f"{flag} {n_tokens} leaves no room for a prompt: the target adds {room} "
                f"token{'s' * (room != 1)} to every prompt (BOS, chat template); ask for more"
            )
        free = max(1, n_tokens - room)
        tag = min(self.tag_words, free)
        return tag, free - tag


def build_requests(
    spec: WorkloadSpec,
    words: PromptWords = UNCALIBRATED,
    *,
    salt: Salt | None = None,
    count_text: Callable[[str], int] | None = None,
) -> list[BenchRequest]:
    """The prompts for a run, in send order (the runner cycles through them if it needs more).

    ``words`` makes synthetic prompts (exact lengths when calibrated); ``salt`` leaves room
    for the runner's per-request tags and salts shared prefixes per run; ``count_text``
    counts a recorded reply's tokens (ShareGPT output lengths). Without it the reply's text
    is kept in ``BenchRequest.reply`` for the caller to count (see bench/calibrate.py).
    """
    if spec.num_prompts < 1:
        raise ConfigError("the number of requests must be >= 1")
    maker = _Maker(rng=random.Random(spec.seed), words=words, salt=salt, count_text=count_text)
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


def _synthetic(n: int, ind: LengthDist, outd: LengthDist, m: _Maker) -> list[BenchRequest]:
    out = []
    for _ in range(n):
        length = ind.sample(m.rng)
        tag, body = m.fill(length, "--input-len", m.words.offset)
        salt_at = 0 if m.salt is not None else None
        out.append(BenchRequest(m.words.text(m.rng, body), outd.sample(m.rng),
                                length if m.words.exact else None, salt_at=salt_at,
                                salt_words=tag))  # fmt: skip
    return out


def _shared_prefix(
    spec: WorkloadSpec, ind: LengthDist, outd: LengthDist, m: _Maker
) -> list[BenchRequest]:
    """G groups, each with its own common prefix of P tokens (the target's own tokens at the
    front included, salted per run), then a unique suffix of ``--input-len`` tokens."""
    if spec.prefix_groups < 1 or spec.prefix_len < 1:
        raise ConfigError("--prefix-groups and --prefix-len must be >= 1")
    prefixes = []
    for g in range(spec.prefix_groups):
        tag, body = m.fill(spec.prefix_len, "--prefix-len", m.words.offset)
        head = "" if m.salt is None else m.salt.tag(f"prefix-{g}", tag)
        prefixes.append(head + m.words.text(m.rng, body))
    out = []
    for i in range(spec.num_prompts):
        length = ind.sample(m.rng)
        tag, body = m.fill(length, "--input-len", 0)
        prefix = prefixes[i % spec.prefix_groups]
        salt_at = len(prefix) if m.salt is not None else None
        total = spec.prefix_len + length if m.words.exact else None
        out.append(BenchRequest(prefix + m.words.text(m.rng, body), outd.sample(m.rng), total,
                                salt_at=salt_at, salt_words=tag))  # fmt: skip
    return out


def _read(path: Path) -> str:
    """A dataset file's text: a regular UTF-8 file of sane size, else one ConfigError line."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # /dev/zero would be read until memory runs out
            raise ConfigError(f"dataset '{path}' is not a regular file; give a file on disk")
        if info.st_size > MAX_DATASET_BYTES:
            raise ConfigError(
                f"dataset '{path}' is {info.st_size / 2**30:.1f} GiB, over the "
                f"{MAX_DATASET_BYTES >> 30} GiB latlab reads; cut it down"
            )
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read dataset file '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"dataset '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "convert it, e.g. with iconv"
        ) from None


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply to be a dataset entry") from None


def _max_tokens(value: Any, where: str) -> int | None:
    """A line's own output length: absent, or a positive integer (not "5", 5.5, NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}: max_tokens/output_len must be a positive integer, got {value!r}"
        )
    return value


def _check_messages(messages: Any, where: str) -> None:
    if messages is None:
        return
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise ConfigError(
            f"{where}: 'messages' must be a list of message objects with a 'role' and 'content'"
        )


def _file_request(prompt: str, max_tokens: int, m: _Maker, **kw: Any) -> BenchRequest:
    """A prompt from a file: the tag goes in front of it (its length is the server's to say)."""
    salt_at = 0 if m.salt is not None else None
    return BenchRequest(prompt, max_tokens, salt_at=salt_at, salt_words=m.tag_words, **kw)


def _jsonl(path: Path, outd: LengthDist, m: _Maker) -> list[BenchRequest]:
    """One JSON object a line: ``prompt`` (or ``text``) or chat ``messages``; optional
    ``output_len`` / ``max_tokens``."""
    out = []
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = _parse_json(line, where)
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: expected an object with a 'prompt' field")
        messages = obj.get("messages")
        _check_messages(messages, where)
        prompt = obj.get("prompt", obj.get("text"))
        if isinstance(messages, list) and messages:
            prompt = str(messages[-1].get("content", "")) if prompt is None else prompt
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{path}:{lineno}: needs a non-empty 'prompt' (or 'messages')")
        max_tokens = _max_tokens(obj.get("output_len", obj.get("max_tokens")), where)
        out.append(_file_request(prompt, max_tokens or outd.sample(m.rng), m, messages=messages))
    return out


def _sharegpt(path: Path, outd: LengthDist, m: _Maker) -> list[BenchRequest]:
    """ShareGPT JSON: a list of ``{"conversations": [{"from": "human", "value": ...}, ...]}``;
    the first human turn is the prompt, the reply's token count the output length."""
    data = _parse_json(_read(path), f"{path} (ShareGPT)")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: ShareGPT data must be a JSON list of conversations")
    out = []
    for conv in data:
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        if not all(isinstance(t, dict) for t in turns[:2]):
            continue
        prompt, reply = turns[0].get("value"), turns[1].get("value")
        if turns[0].get("from") not in ("human", "user") or not prompt or not reply:
            continue
        if m.count_text is None:  # counted later, on the server (bench/calibrate.py)
            out.append(_file_request(prompt, 1, m, reply=reply))
        else:
            out.append(_file_request(prompt, max(1, m.count_text(reply)), m))
    if not out:
        raise ConfigError(
            f"{path}: no usable prompts (each entry needs 'conversations': a human turn, "
            "then a reply, as objects with 'from' and 'value')"
        )
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
