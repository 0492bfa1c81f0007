"""The lab for servers latlab launches: ``latlab optimize --backend vllm``.

The in-process lab (lab.Lab) changes a model or an engine in memory; here every configuration
is its own server launch (latlab.deploy), measured over HTTP with the same passes (the bench
runner under the lab's request-level recipes), interleaved with the baseline launch, judged
by the same noise rule and written into the same table and decision record. What differs:

- each candidate is launched, warmed up, measured and stopped; the baseline launch stays up
  for the whole run, so every candidate repetition has a baseline repetition beside it; a
  request-level recipe (it changes no flag) is measured on the baseline's server, no launch;
- each launch's cold start (launch -> healthy -> first token) and the KV capacity the engine
  logged are recorded with its measurement;
- quality is the HTTP gate (latlab.optimize.http_quality): prompt log-probabilities of the
  held-out windows and greedy completions of the workload's prompts, candidate vs baseline.

``baseline_server`` lends the lab a server latlab already launched (a ``Deployment``) as the
baseline instead of launching one: its flags and environment are the baseline configuration
each recipe changes, and the lab leaves it running. The live tests share one vLLM this way.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from latlab.deploy import Backend, Deployment, LaunchSettings, launch
from latlab.errors import ConfigError
from latlab.optimize import http_quality as hq
from latlab.optimize.lab import Lab, _Baseline, run_lab
from latlab.optimize.lab_plan import LabPlan
from latlab.optimize.lab_workload import LabRequest, LabWorkload
from latlab.optimize.passes import RunResult, _LabTarget, prepare, run_pass
from latlab.optimize.quality import QualityResult, gate, greedy_agreement, windows
from latlab.optimize.recipes import Recipe
from latlab.optimize.subject import Setup
from latlab.optimize.trial import LabResult, Trial
from latlab.optimize.vllm_recipes import BACKEND, for_servers
from latlab.workload import BenchRequest

SERVED_NAME = "latlab-lab"


class ServedRunner:
    """One launched server for one setup: passes over HTTP, quality data, then stop."""

    def __init__(self, setup: Setup, workload: LabWorkload, backend: Backend,
                 log_dir: Path | None, say: Any,
                 server: Deployment | None = None) -> None:  # fmt: skip
        from latlab.bench.targets import GenOptions, OpenAITarget

        self.setup = setup
        self.workload = workload
        self.owned = server is None  # a lent server is left running by close()
        if server is None:
            settings = LaunchSettings(model=setup.model_path, served_model_name=SERVED_NAME,
                                      engine_args=dict(setup.engine_options),
                                      env=dict(setup.engine_env), log_dir=log_dir)  # fmt: skip
            server = launch(backend, settings, progress=say)
        self.server: Deployment = server
        self.name = server.model
        self.loop = asyncio.new_event_loop()
        self.http = OpenAITarget(self.server.url, model=self.name)
        self.opts = GenOptions(ignore_eos=True, temperature=0.0, stream=True)
        self.target = _LabTarget(setup, self._generate)

    async def _generate(self, req: LabRequest, prompt: list[int], rec: Any, out: list[int]) -> None:
        request = BenchRequest(prompt, self.workload.output_len, len(prompt), req.request_id)
        finish = await self.http.run(request, rec, self.opts)
        if finish is not None:
            finish()
        if rec.error:
            raise RuntimeError(rec.error_detail or rec.error)
        # Token counts only (the response cache replays them): quality is judged separately,
        # over HTTP, from log-probabilities and greedy texts.
        out.extend([0] * int(rec.output_tokens or sum(rec.chunk_tokens)))

    def launch_facts(self) -> dict[str, Any]:
        cold, facts = self.server.cold_start, self.server.facts
        return {"cold_start_s": round(cold.first_token_s or 0.0, 2),
                "healthy_s": round(cold.healthy_s, 2),
                "kv_cache_tokens": facts.kv_cache_tokens,
                "launched_by_lab": self.owned, "url": self.server.url}  # fmt: skip

    def run(self, requests: list[LabRequest]) -> RunResult:
        items = prepare(self.setup, requests, self.workload.shared_prefix_len)
        result = run_pass(self.loop, self.target, items, self.workload.concurrency,
                          self.workload.output_len)  # fmt: skip
        result.extra.update(self.launch_facts())
        return result

    def scores(self, chunks: list[list[int]]) -> hq.ScoredText:
        with hq.http_client() as client:
            return hq.score_windows(client, self.server.url, self.name, chunks)

    def greedy(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        with hq.http_client() as client:
            return hq.greedy_texts(client, self.server.url, self.name, prompts, max_tokens)

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.http.aclose())
            self.loop.close()
        finally:
            if self.owned:
                self.server.stop()


class ServedLab(Lab):
    """The lab with one server launch per configuration (see the module docstring)."""

    BACKENDS = (BACKEND,)

    def __init__(self, plan: LabPlan, model_path: str, quality_text: str, *, backend: Backend,
                 progress: Any = None, log_dir: Path | None = None,
                 baseline_server: Deployment | None = None) -> None:  # fmt: skip
        super().__init__(plan, model_path, quality_text, progress)
        self.backend = backend
        self.log_dir = log_dir
        self.baseline_server = baseline_server
        self.chunks = windows(self.text_ids, plan.quality_window_tokens, plan.quality_windows)
        self.launch_s = 0.0  # the baseline's launch: what each candidate costs on top
        self._base_quality: tuple[hq.ScoredText, list[str]] | None = None
        self._candidate_quality: tuple[hq.ScoredText, list[str]] | None = None

    def _setup(self, backend: str) -> Setup:
        if backend not in self.setups:
            lent = self.baseline_server
            flags = dict(self.plan.engine) if lent is None else dict(lent.engine_args)
            env = dict(self.plan.engine_env) if lent is None else dict(lent.env)
            self.setups[backend] = Setup(backend=backend, model_path=self.model_path,
                                         tokenizer=self.tokenizer, engine_options=flags,
                                         engine_env=env)  # fmt: skip
        return self.setups[backend]

    def _runner(self, setup: Setup) -> ServedRunner:
        lent = self.baseline_server
        if lent is not None and setup is self.setups.get(BACKEND):
            self.launch_s = lent.cold_start.healthy_s  # what each candidate launch will cost
            return ServedRunner(setup, self.plan.workload, self.backend, self.log_dir,
                                self.progress, server=lent)  # fmt: skip
        base = self.baselines.get(BACKEND)
        if base is not None and _same_server(setup, base.setup):
            # A request-level recipe (response cache, trimming, grouping) acts in the client:
            # the baseline's server serves it too, no launch.
            return ServedRunner(setup, self.plan.workload, self.backend, self.log_dir,
                                self.progress, server=base.runner.server)  # fmt: skip
        started = time.perf_counter()
        runner = ServedRunner(setup, self.plan.workload, self.backend, self.log_dir,
                              self.progress)  # fmt: skip
        if not self.launch_s:
            self.launch_s = time.perf_counter() - started
        return runner

    def _memory(self, setup: Setup, runner: Any) -> tuple[int, str]:
        # Weights and cache are the server's; their sizes are fixed by the flags (the KV
        # capacity each launch logged is in its notes), so nothing here is compared.
        return 0, "not measured for a launched server (KV capacity in the notes)"

    def _over_budget(self, backend: str, extra_s: float = 0.0) -> str | None:
        return super()._over_budget(backend, extra_s + self.launch_s)

    def _quality_data(self, runner: ServedRunner) -> tuple[hq.ScoredText, list[str]]:
        """Held-out scores, and greedy texts of the prompts this setup sends (trimmed,
        reordered), by request id; a response-cache hit would repeat its text exactly."""
        self.progress(f"{runner.server.backend}: scoring held-out text and greedy outputs")
        prefix_len = self.plan.workload.shared_prefix_len
        sent = {r.request_id: p for r, p in prepare(runner.setup, self.requests, prefix_len)}
        prompts = [sent[r.request_id] for r in self.requests]
        return runner.scores(self.chunks), runner.greedy(prompts, self.plan.workload.output_len)

    def _after_measure(self, setup: Setup, runner: Any) -> None:
        """Before the candidate server stops: its quality data (the gate runs after)."""
        self._candidate_quality = self._quality_data(runner)

    def _quality(self, base: _Baseline, setup: Setup, first: RunResult, exact: bool,
                 changes_model: bool) -> QualityResult:  # fmt: skip
        if self._base_quality is None:
            self._base_quality = self._quality_data(base.runner)
        assert self._candidate_quality is not None
        (base_scores, base_texts), (scores, texts) = self._base_quality, self._candidate_quality
        # As in-process: logits for recipes that change how the model computes; request-level
        # ones (trimming) are judged by their greedy outputs alone.
        logits = hq.compare_scores(base_scores, scores)[0] if changes_model else None
        encode = self.tokenizer.encode
        match, agreement = greedy_agreement(
            [encode(t, add_special_tokens=False) for t in base_texts],
            [encode(t, add_special_tokens=False) for t in texts],
        )
        return gate(logits, match, agreement, exact, self.plan.thresholds)

    def run(self, recipes: list[Recipe]) -> list[Trial]:
        """Request-level recipes act in the client here, unchanged; the rest must be vLLM's."""
        return super().run([r if r.backend == BACKEND else for_servers(r) for r in recipes])


def _same_server(setup: Setup, other: Setup) -> bool:
    """Whether two setups launch the same server (flags, environment and weights)."""
    return (setup.engine_options, setup.engine_env, setup.model_path) == (
        other.engine_options, other.engine_env, other.model_path)  # fmt: skip


def run_served_lab(
    plan: LabPlan,
    model: str | None,
    quality_text: str | None,
    *,
    backend: Backend,
    progress: Any = None,
    log_dir: Path | None = None,
    baseline_server: Deployment | None = None,
) -> LabResult:
    """``run_lab`` with one server launch per configuration (see the module docstring)."""
    if baseline_server is not None and (plan.engine or plan.engine_env):
        raise ConfigError("a plan's [engine] / [engine_env] tables cannot change a baseline "
                          "server that is already running: drop them, or let the lab launch "
                          "the baseline")  # fmt: skip

    def make_lab(lab_plan: LabPlan, model_path: str, text: str) -> Lab:
        return ServedLab(lab_plan, model_path, text, backend=backend, progress=progress,
                         log_dir=log_dir, baseline_server=baseline_server)  # fmt: skip

    return run_lab(plan, model, quality_text, progress, make_lab=make_lab)
