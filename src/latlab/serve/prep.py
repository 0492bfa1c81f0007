"""Turning a request's prompt or chat into token ids, inline or in a preparation process.

``Tokens`` is the one implementation: the checks, the chat template, the bounded count
(latlab.serve.prompt_tokens) and the encode. The app runs it inline for small requests and,
for large ones, in a child process (``PrepProcess``) holding its own copy of the tokenizer.

Why a process: rendering the template of a 1,024-message chat is ~12 ms of Python holding the
GIL, and tokenizing it ~7 ms more; on a thread that GIL is the one the engine's thread needs for
every decode step, so a client sending such chats back to back stretched every other stream's
chunk gaps (issue 18, docs/serve.md). vLLM keeps tokenization in its API-server process, apart
from the engine core, for the same reason. The child loads the tokenizer exactly as the engine
does (``latlab.model_files.load_tokenizer``: from_pretrained, trust_remote_code=False), so its
ids are the engine's ids; it loads no model (transformers itself still imports torch:
about 5 s and 300 MB at start, docs/serve.md).

The child starts in the background (spawn: a fresh interpreter, no copy of the engine's
threads or memory) and the app keeps preparing on its thread until the child answers, so
start-up is not delayed. A child that dies is replaced; the request it was preparing gets a
503. ``close`` stops it, and the server calls it on every way out.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from latlab.serve.prompt_tokens import count_past, cutter_for

# A prompt with more characters than this per context token cannot fit (tokens average about
# four characters); refusing it before tokenizing keeps a huge prompt from being tokenized.
MAX_CHARS_PER_TOKEN = 64
# Seconds close() waits for the child to exit before killing it (it finishes one request).
_STOP_WAIT_S = 5.0


class Refusal(Exception):
    """A prompt the server refuses (the app turns it into its OpenAI-style 400)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message, param, code)
        self.message, self.param, self.code = message, param, code


class WorkerDied(Exception):
    """The preparation process died while preparing this request."""


class Tokens:
    """A prompt's or a chat's token ids, refusing what cannot fit, with one tokenizer."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.limit = int(max_model_len)
        # Where prompts can be cut to count their tokens only as far as the context allows.
        self.cutter = cutter_for(tokenizer)

    def prompt_ids(
        self, prompt: str, add_special_tokens: bool = True, *, bounded: bool = True
    ) -> list[int]:
        self._check_chars(len(prompt))
        text = _unicode(prompt, "prompt")
        if bounded:
            self._check_count(text, add_special_tokens, "prompt")
        return self._encode(text, add_special_tokens=add_special_tokens)

    def chat_ids(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool,
        add_special_tokens: bool = False,
        *,
        bounded: bool = True,
    ) -> list[int]:
        """``messages`` are plain dicts (``ChatMessage.as_template_dict``), so they pickle."""
        for message in messages:
            _unicode(message["content"], "messages")
        self._check_chars(sum(len(m["content"]) for m in messages))
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors, missing template: all the client's to fix
            raise Refusal(f"could not apply the model's chat template: {exc}", "messages") from None
        if bounded:
            self._check_count(text, add_special_tokens, "messages")
        # The template already wrote any BOS token; adding special tokens would double it.
        return self._encode(text, add_special_tokens=add_special_tokens)

    def _encode(self, text: str, **kwargs: Any) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, **kwargs))
        except Exception as exc:  # what the tokenizer cannot take is the client's to fix
            raise Refusal(f"could not tokenize the prompt: {exc}", "prompt") from None

    def _check_count(self, text: str, add_special_tokens: bool, param: str) -> None:
        """Refuse a prompt with no room for output after tokenizing only about a context's worth
        of it (latlab.serve.prompt_tokens), so a huge prompt costs what a full one does."""
        if self.cutter is None:
            return  # a tokenizer not known to keep its tokens across cuts: encoded whole
        limit = self.limit
        try:
            counted = count_past(self.tokenizer, self.cutter, text, limit - 1,
                                 add_special_tokens=add_special_tokens)  # fmt: skip
        except Exception as exc:  # as _encode: what the tokenizer cannot take is the client's
            raise Refusal(f"could not tokenize the prompt: {exc}", param) from None
        if counted is not None:
            raise Refusal(
                f"this model's maximum context length is {limit} tokens; the prompt has at least "
                f"{counted} tokens (counting stopped there), which leaves no room for output; "
                "shorten it",
                param,
                "context_length_exceeded",
            )

    def _check_chars(self, chars: int) -> None:
        if chars > self.limit * MAX_CHARS_PER_TOKEN:
            raise Refusal(
                f"the prompt has {chars} characters, far more than fit in this model's "
                f"maximum context of {self.limit} tokens; shorten it",
                "prompt",
                "context_length_exceeded",
            )


def _unicode(text: str, param: str) -> str:
    """``text`` if it can be UTF-8 encoded; JSON can carry lone surrogates ("\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Refusal(
            f"{param} is not valid Unicode: a lone surrogate at character {exc.start}", param
        ) from None
    return text


# ---- the child process -------------------------------------------------------------------

_CHILD: Tokens | None = None


def _child_init(model_dir: str, max_model_len: int) -> None:
    """Load the tokenizer as the engine does. Ctrl-C reaches the whole terminal's process
    group: the child ignores it and SIGTERM, the server stops it (and it exits with the server)."""
    global _CHILD
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    from latlab.model_files import load_tokenizer

    _CHILD = Tokens(load_tokenizer(model_dir), max_model_len)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the server's process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_pid() -> int:
    """The first task: answers once the tokenizer is loaded."""
    return os.getpid()


def _child_work(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Tokens.<method>`` in the child: ids, or the refusal's fields (kept as a plain tuple:
    whatever the child raises must unpickle in the server)."""
    assert _CHILD is not None
    try:
        return getattr(_CHILD, method)(*args, **kwargs)
    except Refusal as exc:
        return ("refused", exc.message, exc.param, exc.code)


# ---- the server's side -------------------------------------------------------------------


class PrepProcess:
    """One preparation process, started in the background and replaced when it dies."""

    def __init__(
        self,
        model_dir: str,
        max_model_len: int,
        *,
        report: Callable[[str], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``report`` gets the start-up line (stdout by default), ``log`` the line saying the
        child died or failed to start (stderr by default)."""
        self.model_dir = model_dir
        self.max_model_len = int(max_model_len)
        self.report = report or _stdout
        self.log = log or _stderr
        self._lock = threading.Lock()
        self._pool: cf.ProcessPoolExecutor | None = None
        self._ready = False
        self._closed = False
        self.pid: int | None = None
        self.started_s: float | None = None  # spawn + tokenizer load, of the last start

    def start(self) -> PrepProcess:
        """Spawn the child and load its tokenizer in the background; returns at once."""
        with self._lock:
            if self._closed:
                return self
            context = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(
                1, mp_context=context, initializer=_child_init,
                initargs=(self.model_dir, self.max_model_len),
            )  # fmt: skip
            self._pool, self._ready = pool, False
            began = time.perf_counter()
            pool.submit(_child_pid).add_done_callback(lambda f: self._up(pool, f, began))
        return self

    def _up(self, pool: cf.ProcessPoolExecutor, future: cf.Future[int], began: float) -> None:
        with self._lock:
            if pool is not self._pool or future.cancelled():
                return  # closed or replaced meanwhile
            failed = future.exception()
            if failed is None:
                self.pid, self._ready = future.result(), True
                self.started_s = time.perf_counter() - began
        if failed is not None:
            self.log(
                f"latlab serve: the preparation process did not start ({failed}); large "
                "requests stay on the preparation thread"
            )
            return
        self.report(
            f"latlab serve: preparation process ready (pid {self.pid}, {self.started_s:.2f} s "
            "to spawn and load the tokenizer); large requests are prepared there from now on"
        )

    @property
    def ready(self) -> bool:
        return self._ready and not self._closed

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[int]:
        """``Tokens.<method>(*args, **kwargs)`` in the child (blocking: call it off the loop).

        Raises Refusal as the inline call would, or WorkerDied after logging one line and
        starting a replacement."""
        pool = self._pool
        if pool is None or not self.ready:
            raise WorkerDied("the preparation process is not running")
        try:
            result = pool.submit(_child_work, method, args, kwargs).result()
        except cf.process.BrokenProcessPool:
            self._replace(pool)
            raise WorkerDied("the preparation process died while preparing this request") from None
        if isinstance(result, tuple):
            _, message, param, code = result
            raise Refusal(message, param, code)
        return result

    def _replace(self, broken: cf.ProcessPoolExecutor) -> None:
        with self._lock:
            if broken is not self._pool or self._closed:
                return  # another request saw it first, or the server is stopping
            self._ready = False
        self.log(
            f"latlab serve: the preparation process (pid {self.pid}) died; the request it was "
            "preparing got a 503; starting a new one (large requests use the thread meanwhile)"
        )
        _stop_pool(broken, 0.0)
        self.start()

    def close(self) -> None:
        """Stop the child (waits for the request it is preparing, then kills what is left)."""
        with self._lock:
            serving = self._ready
            self._closed, self._ready = True, False
            pool, self._pool = self._pool, None
        if pool is not None:
            # Still loading: no request can be in it, so there is nothing to wait for.
            _stop_pool(pool, _STOP_WAIT_S if serving else 0.0)


def _stop_pool(pool: cf.ProcessPoolExecutor, wait_s: float = _STOP_WAIT_S) -> None:
    """Shut ``pool`` down and make sure its process is gone: the executor's own shutdown
    cannot be given a timeout, so its worker is joined here for ``wait_s``, then killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(wait_s)
        if process.is_alive():
            process.kill()
            process.join(_STOP_WAIT_S)


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
