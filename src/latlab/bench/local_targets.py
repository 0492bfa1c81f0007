"""In-process targets: a transformers model, latlab's own engine, or any Python callable.

Synchronous generators run in their own thread (one per request) and take their timestamps
there, at the moment each token exists, so the event loop's scheduling never delays them.
torch, transformers and latlab.engine are imported only when such a target is built.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from latlab.bench.contract import BaseTarget, GenOptions
from latlab.errors import (
    CapacityError,
    ConfigError,
    LatlabError,
    OverloadedError,
    TargetError,
)
from latlab.metrics import RequestRecord, default_token_count
from latlab.workload import BenchRequest

if TYPE_CHECKING:
    from latlab.engine.protocol import Engine

_now = time.perf_counter_ns


def _finish_ok(rec: RequestRecord, source: str) -> None:
    rec.end_ns = _now()
    rec.output_tokens = sum(rec.chunk_tokens)
    rec.output_tokens_source = source
    if not rec.chunk_ns:
        rec.error, rec.error_detail = "no_content", "the target produced no tokens"


def _finish_error(rec: RequestRecord, exc: BaseException) -> None:
    rec.end_ns = _now()
    reasons = {OverloadedError: "overloaded", CapacityError: "capacity", ConfigError: "bad_request"}
    rec.error = next((r for t, r in reasons.items() if isinstance(exc, t)), type(exc).__name__)
    rec.error_detail = (str(exc).splitlines() or [""])[0][:200] or None


async def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a dedicated thread (the default pool is too small for 64+ streams)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # reported through the future
            loop.call_soon_threadsafe(_set_exc, fut, exc)
        else:
            loop.call_soon_threadsafe(_set_result, fut)

    threading.Thread(target=body, name="latlab-bench-gen", daemon=True).start()
    await fut


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exc(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _drain_sync(it: Any, rec: RequestRecord, count: Callable[[Any], int], stop: Any) -> None:
    """Pull a sync iterator to the end, stamping each content item as it appears."""
    for item in it:
        n = count(item)
        if n > 0:
            rec.chunk_ns.append(_now())
            rec.chunk_tokens.append(n)
        if stop.is_set():
            rec.error = "interrupted"
            return


class _StopSet:
    """A shared flag: the runner sets it on Ctrl-C so generation threads end early."""

    def __init__(self) -> None:
        self._ev = threading.Event()

    def is_set(self) -> bool:
        return self._ev.is_set()

    def set(self) -> None:
        self._ev.set()


# ---------------------------------------------------------------------------- transformers


class TransformersTarget(BaseTarget):
    """A Hugging Face model generating token by token in-process: the "no optimization" baseline."""

    stamps_in_loop = False  # the streamer stamps tokens in the generating thread

    def __init__(
        self,
        model: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        *,
        num_threads: int | str | None = None,
        _loaded: tuple[Any, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if _loaded is None:
            _loaded = _load_hf(model, dtype, device)
        self.model, self.tokenizer = _loaded
        self.num_threads = _set_threads(self.model, num_threads)
        self.device = device
        self.name = name or f"transformers:{model or 'bundled tiny-llama'}"
        self.stop = _StopSet()

    @classmethod
    def from_loaded(
        cls, model: Any, tokenizer: Any, name: str = "transformers"
    ) -> TransformersTarget:
        """Wrap a model already in memory (``latlab optimize`` passes a modified one)."""
        device = str(getattr(model, "device", "cpu"))
        return cls(_loaded=(model, tokenizer), device=device, name=name)

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> None:
        import torch

        tok = self.tokenizer
        ids = req.prompt if isinstance(req.prompt, list) else tok.encode(req.prompt)
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": req.max_tokens,
            "do_sample": opts.temperature > 0,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "streamer": _TimingStreamer(rec, self.stop),
        }
        if opts.temperature > 0:
            kwargs["temperature"] = opts.temperature
        else:  # silence "temperature is set but do_sample is False" from generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if opts.ignore_eos:
            kwargs["min_new_tokens"] = req.max_tokens
        elif opts.min_tokens:
            kwargs["min_new_tokens"] = opts.min_tokens
        rec.prompt_tokens = len(ids)

        def generate() -> None:
            with torch.inference_mode():
                self.model.generate(**kwargs)

        rec.send_ns = _now()
        try:
            await _in_thread(generate)
        except _Interrupted:
            _finish_error(rec, _Interrupted("interrupted"))
            rec.error = "interrupted"
            return
        except Exception as exc:
            _finish_error(rec, exc)
            return
        _finish_ok(rec, "engine")
        rec.finish_reason = "length" if rec.num_output_tokens >= req.max_tokens else "stop"

    async def aclose(self) -> None:
        self.stop.set()


class _Interrupted(Exception):
    pass


class _TimingStreamer:
    """transformers streamer: ``put`` is called with each new token (first with the prompt)."""

    def __init__(self, rec: RequestRecord, stop: _StopSet) -> None:
        self.rec = rec
        self.stop = stop
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        ns = _now()
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.rec.chunk_ns.append(ns)
        self.rec.chunk_tokens.append(int(value.numel()))
        if self.stop.is_set():
            raise _Interrupted("benchmark interrupted")

    def end(self) -> None:
        pass


SMALL_MODEL_PARAMS = 20_000_000


def _set_threads(model: Any, num_threads: int | str | None) -> int:
    """Apply torch's intra-op thread count (process-wide) and return it.

    "auto": one thread for models under 20M parameters, where each op is too small to split
    and extra threads only add synchronization (on 2 busy cores they made the bundled model
    ~10x slower); torch's default otherwise. None leaves torch as it is.
    """
    import torch

    if num_threads == "auto":
        params = sum(p.numel() for p in model.parameters())
        num_threads = 1 if params < SMALL_MODEL_PARAMS else None
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ConfigError("--threads must be >= 1 (or auto)")
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def _load_hf(model: str | None, dtype: str, device: str) -> tuple[Any, Any]:
    from latlab import model_files

    return (model_files.load_causal_lm(model, dtype=dtype, device=device),
            model_files.load_tokenizer(model))  # fmt: skip


# ---------------------------------------------------------------------------- callable


class CallableTarget(BaseTarget):
    """Any Python function ``fn(prompt, max_tokens) -> iterator`` (sync or async) of tokens.

    Each item counts as its length if it is a list/tuple of token ids, else one token (empty
    strings count zero). A sync iterator runs in its own thread and is timestamped there.
    """

    def __init__(
        self, fn: Callable[..., Any], *, tokenizer: Any | None = None, name: str = ""
    ) -> None:
        if not callable(fn):
            raise TargetError(f"{fn!r} is not callable")
        self.fn = fn
        self.tokenizer = tokenizer if tokenizer is not None else getattr(fn, "tokenizer", None)
        self.name = (
            name or f"callable:{getattr(fn, '__module__', '?')}:{getattr(fn, '__name__', '?')}"
        )
        self.stop = _StopSet()

    @classmethod
    def from_spec(cls, spec: str) -> CallableTarget:
        """Import ``module:function`` (``package.mod:obj.attr`` works too)."""
        mod_name, sep, attr = spec.partition(":")
        if not sep or not mod_name or not attr:
            raise TargetError(f"--callable {spec!r} must look like module:function")
        if "" not in sys.path and os.getcwd() not in sys.path:  # like uvicorn's --app-dir .
            sys.path.insert(0, os.getcwd())
        try:
            obj: Any = importlib.import_module(mod_name)
        except (Exception, SystemExit) as exc:  # SyntaxError, a raise or sys.exit() at import
            raise TargetError(
                f"cannot import module '{mod_name}' for --callable: {type(exc).__name__}: {exc}"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise TargetError(f"module '{mod_name}' has no attribute '{attr}'")
            obj = getattr(obj, part)
        return cls(obj, name=f"callable:{spec}")

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> None:
        rec.send_ns = _now()
        try:
            stream = self.fn(req.prompt, req.max_tokens)
            if inspect.isawaitable(stream):
                stream = await stream
            if hasattr(stream, "__aiter__"):
                async for item in stream:
                    n = default_token_count(item)
                    if n > 0:
                        rec.chunk_ns.append(_now())
                        rec.chunk_tokens.append(n)
            else:
                await _in_thread(lambda: _drain_sync(stream, rec, default_token_count, self.stop))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # The user's code exiting or raising KeyboardInterrupt fails its request, not the
            # run: the other requests and the JSON still count. (Ctrl-C is the runner's signal
            # handler, which never raises here.)
            _finish_error(rec, exc)
            return
        if rec.error is None:
            _finish_ok(rec, "chunks")
        else:
            rec.end_ns = _now()

    async def aclose(self) -> None:
        self.stop.set()


# ---------------------------------------------------------------------------- latlab engine


class EngineTarget(BaseTarget):
    """latlab's continuous-batching engine (``latlab.engine.AsyncLLM``) in-process."""

    def __init__(
        self,
        engine: Engine,
        *,
        sampling_params: Callable[..., Any] | None = None,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.name = f"latlab-engine:{engine.model_name}"
        self._params = sampling_params
        self._owns = owns_engine
        self.settings: dict[str, Any] = {}  # EngineConfig fields, when built by from_model

    @classmethod
    def from_model(cls, model: str | None = None, **engine_config: Any) -> EngineTarget:
        """Build an AsyncLLM for ``model`` (None = bundled) with EngineConfig fields."""
        try:
            from latlab.engine import AsyncLLM
            from latlab.engine.config import EngineConfig
        except ImportError as exc:
            raise TargetError(
                f"latlab's engine is not available ({exc}); use --backend transformers"
            ) from None
        config = EngineConfig.from_options(model=model, **engine_config)
        target = cls(AsyncLLM(config), owns_engine=True)
        target.settings = dict(engine_config)
        return target

    def _make_params(self, **kw: Any) -> Any:
        if self._params is None:
            from latlab.engine.sampling_params import SamplingParams

            self._params = SamplingParams
        return self._params(**kw)

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> None:
        try:
            params = self._make_params(
                max_tokens=req.max_tokens,
                temperature=opts.temperature,
                ignore_eos=opts.ignore_eos,
                min_tokens=opts.min_tokens or 0,
            )
        except LatlabError as exc:
            _finish_error(rec, exc)
            return
        last = None
        rec.send_ns = _now()
        try:
            async for out in self.engine.generate(req.prompt, params, request_id=rec.request_id):
                ns = _now()
                n = len(out.new_token_ids)
                if n:
                    rec.chunk_ns.append(ns)
                    rec.chunk_tokens.append(n)
                last = out
        except Exception as exc:
            _finish_error(rec, exc)
            return
        _finish_ok(rec, "engine")
        if last is not None and last.prompt_token_ids is not None:
            rec.prompt_tokens = len(last.prompt_token_ids)
        cached = getattr(last, "num_cached_tokens", None)
        rec.cached_tokens = cached if isinstance(cached, int) else None
        rec.finish_reason = getattr(last, "finish_reason", None)
        if last is not None and last.finish_reason == "abort":
            rec.error, rec.error_detail = "aborted", "the engine aborted the request"

    async def aclose(self) -> None:
        if self._owns:
            await self.engine.shutdown()
