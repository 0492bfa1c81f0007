"""``latlab bench``: parse flags, build a target and a BenchConfig, run, print, write files."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from latlab.bench.config import IN_PROCESS_DEFAULTS, BenchConfig, default_of
from latlab.cli import main
from latlab.cli.cost_options import price_options
from latlab.cli.deploy_options import vllm_cmd_option
from latlab.cli.outputs import check_writable_file
from latlab.cli.store_options import open_store, record_options, record_run
from latlab.errors import ConfigError

if TYPE_CHECKING:
    from latlab.bench.contract import Target

# With no --url / --callable the bench runs in-process; the lead may switch this to "latlab".
DEFAULT_BACKEND = "transformers"
IN_PROCESS_BACKENDS = ("transformers", "latlab")
SERVER_BACKENDS = ("vllm", "latlab-server")  # launched as processes, measured over HTTP


def _int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, e.g. 1,4,16") from None


def _float_list(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, e.g. 1,2,4 (or inf)") from None


def _target(opts: dict[str, Any], config: BenchConfig) -> Target:
    from latlab.bench import local_targets, targets

    if opts["url"] and opts["callable_spec"]:
        raise ConfigError("give --url or --callable, not both")
    in_process_engine = opts["backend"] == "latlab" and not (opts["url"] or opts["callable_spec"])
    if opts["engine_env"]:
        raise ConfigError(
            "--engine-env applies to launched servers (--backend vllm, latlab-server)"
        )
    if opts["engine_arg"] and not in_process_engine:
        raise ConfigError("--engine-arg applies to --backend latlab (in-process) only")
    if opts["url"]:
        tok = _tokenizer(opts["tokenizer"]) if opts["tokenizer"] else None
        return targets.OpenAITarget(opts["url"], model=opts["model"], api=config.api,
                                    api_key=opts["api_key"], tokenizer=tok,
                                    timeout_s=opts["timeout"])  # fmt: skip
    if opts["callable_spec"]:
        target = local_targets.CallableTarget.from_spec(opts["callable_spec"])
        if opts["tokenizer"]:
            target.tokenizer = _tokenizer(opts["tokenizer"])
        return target
    if opts["threads"] != "auto" and not str(opts["threads"]).isdigit():
        raise ConfigError("--threads takes a number or auto")
    if opts["backend"] == "latlab":
        settings = {"dtype": opts["dtype"], "device": opts["device"]}
        settings.update(_engine_args(opts["engine_arg"]))
        return local_targets.EngineTarget.from_model(opts["model"], **settings)
    threads = opts["threads"] if opts["threads"] == "auto" else int(opts["threads"])
    return local_targets.TransformersTarget(
        opts["model"], dtype=opts["dtype"], device=opts["device"], num_threads=threads
    )


def _salt(value: str | None, off: bool) -> str | None:
    if off and value is not None:
        raise ConfigError("give --salt or --no-salt, not both")
    if value is not None and not value.strip():
        raise ConfigError("--salt needs a non-empty value (or use --no-salt)")
    return "" if off else value


def _engine_args(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as EngineConfig fields; values read as int, float, bool or text."""
    from latlab.deploy.flags import parse_settings

    return parse_settings(items, "--engine-arg")


def _render_spread(result: dict[str, Any]) -> None:
    from rich.console import Console

    from latlab.compare.spread import spread_table, spreads

    Console(width=None if sys.stdout.isatty() else 160).print(spread_table(spreads(result)))


def _d(name: str) -> str:
    """The help text's default, read from BenchConfig (the one place defaults live)."""
    remote = default_of(name)
    local = IN_PROCESS_DEFAULTS.get(name, remote)
    if isinstance(remote, bool):
        remote, local = ("on" if v else "off" for v in (remote, local))
    if local == remote:
        return f"[default: {remote}]"
    if isinstance(local, list):
        local = ",".join(map(str, local))
    return f"[default: {remote} with --url, {local} in-process]"


def _config(opts: dict[str, Any]) -> BenchConfig:
    """The flags the user gave on top of BenchConfig's defaults for this kind of target."""
    from latlab.metrics import SLO

    for flag, path in (("--json", opts["json_path"]), ("--csv", opts["csv_path"])):
        if path:
            check_writable_file(path, flag)
    slo = None
    if any(opts[k] is not None for k in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2e_ms")):
        slo = SLO(opts["slo_ttft_ms"], opts["slo_tpot_ms"], opts["slo_e2e_ms"])
    given = {name: opts[name] for name in _CONFIG_FLAGS}
    return BenchConfig.from_options(
        remote=bool(opts["url"]) or any(b in SERVER_BACKENDS for b in _backends(opts["backend"])),
        concurrency=_int_list(opts["concurrency"], "--concurrency"),
        rate=_float_list(opts["rate"], "--rate"),
        duration_s=opts["duration"],
        slo=slo,
        salt=_salt(opts["salt"], opts["no_salt"]),
        **given,
    )


# Flags whose name is their BenchConfig field's.
_CONFIG_FLAGS = ("burstiness", "num_requests", "warmup", "input_len", "output_len", "dataset",
                 "prefix_groups", "prefix_len", "api", "stream", "seed", "ignore_eos",
                 "min_tokens", "temperature", "workers", "repeats")  # fmt: skip


def _tokenizer(name: str) -> Any:
    from latlab.model_files import load_tokenizer

    return load_tokenizer(name)


@main.command("bench")
@click.option("--url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
@click.option(
    "--callable",
    "callable_spec",
    metavar="MODULE:FUNCTION",
    help="A Python function fn(prompt, max_tokens) returning a token iterator.",
)
@click.option(
    "--model",
    help="Served model name with --url (default: the first /v1/models "
    "lists); a local path or Hub id in-process (default: the bundled model).",
)
@click.option(
    "--backend",
    default=DEFAULT_BACKEND,
    show_default=True,
    help="transformers | latlab: in-process (both, comma-separated: one table side by side); "
    "vllm | latlab-server: launch that server on --model, measure it over HTTP, stop it; "
    "several servers comma-separated (vllm,latlab-server) are compared on one workload.",
)
@click.option(
    "--compare-model",
    "compare_models",
    multiple=True,
    metavar="PATH",
    help="With a server --backend: also launch it on this model (a pruned or distilled "
    "checkpoint, say) and compare with --model on the same workload (repeatable).",
)
@click.option("--concurrency", metavar="LIST", help="Closed loop users per level, e.g. 1,4,16.")
@click.option("--rate", metavar="LIST", help="Open loop requests/s per level, e.g. 1,2,4 or inf.")
@click.option(
    "--burstiness",
    type=float,
    help=f"Gamma shape of open-loop gaps: 1 = Poisson, < 1 burstier. {_d('burstiness')}",
)
@click.option("--num-requests", type=int, help=f"Requests per level. {_d('num_requests')}")
@click.option("--duration", type=float, help="Seconds per level, not a count.")
@click.option("--warmup", type=int, help=f"Requests sent first, in no figure. {_d('warmup')}")
@click.option("--input-len", help=f"N | uniform:LO:HI | normal:MEAN:STD tokens. {_d('input_len')}")
@click.option("--output-len", help=f"Same forms as --input-len. {_d('output_len')}")
@click.option(
    "--dataset", help=f"synthetic | jsonl:FILE | sharegpt:FILE | shared-prefix. {_d('dataset')}"
)
@click.option(
    "--prefix-groups", type=int, help=f"shared-prefix: number of groups. {_d('prefix_groups')}"
)
@click.option(
    "--prefix-len",
    type=int,
    help=f"shared-prefix: tokens in each group's common prefix. {_d('prefix_len')}",
)
@click.option("--api", type=click.Choice(["completions", "chat"]), help=_d("api"))
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token [env: OPENAI_API_KEY].")
@click.option(
    "--tokenizer",
    help="Tokenizer (path or Hub id) for exact prompt lengths and "
    "client-side token counts when the server sends no usage.",
)
@click.option("--stream/--no-stream", default=None, help=_d("stream"))
@click.option(
    "--ignore-eos/--no-ignore-eos",
    default=None,
    help=f"Force exactly --output-len tokens where the target supports it. {_d('ignore_eos')}",
)
@click.option("--min-tokens", type=int)
@click.option("--temperature", type=float, help=_d("temperature"))
@click.option("--slo-ttft-ms", type=float, default=None, help="Goodput: TTFT objective.")
@click.option("--slo-tpot-ms", type=float, default=None, help="Goodput: TPOT objective.")
@click.option("--slo-e2e-ms", type=float, default=None, help="Goodput: E2E objective.")
@click.option(
    "--find",
    type=click.Choice(["max-concurrency", "max-rate"]),
    default=None,
    help="Search the highest concurrency (closed loop) or request rate (open loop) at which "
    "the --slo-percentile of every --slo-* objective holds.",
)
@click.option(
    "--slo-percentile",
    type=float,
    default=99.0,
    show_default=True,
    help="--find: the percentile the objectives bound.",
)
@click.option("--find-start", type=float, default=None, help="--find: first load [default: 1].")
@click.option(
    "--find-max",
    type=float,
    default=None,
    help="--find: highest load tried [default: 1024 users or 1000 req/s].",
)
@click.option(
    "--find-tolerance",
    default="10%",
    show_default=True,
    help="--find: stop when the bracket is this narrow (relative; concurrency at least 1).",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds without a byte before a request fails as 'timeout'.",
)
@click.option("--dtype", default="float32", show_default=True, help="In-process model dtype.")
@click.option(
    "--engine-arg",
    multiple=True,
    metavar="KEY=VALUE",
    help="An engine setting: an EngineConfig field for latlab / latlab-server, a vllm serve "
    "flag for vllm (max_num_seqs=8); prefix with BACKEND: for one server only (repeatable).",
)
@click.option(
    "--engine-env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Environment setting for a launched server, e.g. VLLM_CPU_KVCACHE_SPACE=1; "
    "prefix with BACKEND: for one server only (repeatable).",
)
@vllm_cmd_option
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where launched servers' logs and results go [default: ./latlab-runs/bench-<UTC>/].",
)
@click.option("--device", default="cpu", show_default=True, help="In-process model device.")
@click.option(
    "--threads",
    default="auto",
    show_default=True,
    help="torch threads for --backend transformers; auto = 1 under 20M parameters.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write per-request rows.")
@click.option("--seed", type=int, help=f"Fixes prompts and arrivals. {_d('seed')}")
@click.option(
    "--salt",
    default=None,
    help="Value behind the tag that starts every prompt, so no level, repeat or run hits a "
    "server's prefix cache by accident [default: random, recorded in the JSON].",
)
@click.option(
    "--no-salt",
    is_flag=True,
    help="Send the same untagged prompts every level and run (measures a warm prefix cache).",
)
@click.option(
    "--workers",
    type=int,
    help=f"Client processes sharing each level (HTTP only), for many streams. {_d('workers')}",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    help="Measure every level N times (interleaved) and print the spread and intervals. "
    f"{_d('repeats')}",
)
@price_options
@click.option("--fail-on-error", is_flag=True, help="Exit 1 if any request failed.")
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
@record_options
def bench(**opts: Any) -> int:
    """Measure TTFT, ITL, TPOT, E2E, throughput and goodput of a server, model or function.

    With no arguments: a short in-process benchmark of the bundled model.
    """
    from latlab.bench import run_bench
    from latlab.cost import resolve_price

    price = resolve_price(opts["price_per_hour"], opts["price_device"])
    backends = _backends(opts["backend"])
    config = _config(opts)
    show = not opts["no_progress"] and sys.stderr.isatty()
    if opts["compare_models"] and backends[0] not in SERVER_BACKENDS:
        raise ConfigError("--compare-model launches servers: give --backend "
                          f"{' or '.join(SERVER_BACKENDS)}")  # fmt: skip
    if backends[0] in SERVER_BACKENDS:
        if opts["find"]:
            raise ConfigError("--find measures one server: give --url, or one --backend at a time")
        return _bench_servers(opts, config, backends, show)
    if len(backends) > 1:
        return _bench_side_by_side(backends, config, opts)
    opts = {**opts, "backend": backends[0]}
    search = _search(opts, config)
    store = open_store(opts["store_path"], opts["no_store"], opts["run_name"], opts["tags"])
    target = _target(opts, config)
    plan = None if search is None else search.next_probe
    result = run_bench(config, target, progress=show, plan=plan)
    document = result.to_dict()
    result.render()
    if search is not None:
        document["capacity"] = _render_search(search, result.interrupted)
    if config.repeats > 1:
        _render_spread(document)
    if price is not None:
        _render_cost(document, price)
    _write_files(result, document, opts)
    record_run(store, kind="bench", result=document, name=opts["run_name"],
               tags=opts["tags"], source_path=opts["json_path"])  # fmt: skip
    return _exit_code([result], opts, search)


def _bench_side_by_side(backends: list[str], config: Any, opts: dict[str, Any]) -> int:
    """``--backend transformers,latlab``: the same workload (one salt) on each in-process
    engine, one after the other so each has the machine to itself; one table."""
    from latlab.bench import run_bench
    from latlab.bench.results import render_all, write_all_json, write_csv_rows

    if opts["url"] or opts["callable_spec"] or opts["find"]:
        raise ConfigError("several --backend values compare in-process engines; drop --url, "
                          "--callable or --find, or give one backend")  # fmt: skip
    if opts["price_per_hour"] is not None or opts["price_device"] is not None:
        raise ConfigError("--price-per-hour/--price-device price one run; give one backend")
    if not opts["no_store"]:  # a bad store, name or tag fails before the work
        open_store(opts["store_path"], False, opts["run_name"], opts["tags"]).close()
    if config.salt is None:  # one salt: the runs differ only by engine
        config.salt = secrets.token_hex(4)
    show = not opts["no_progress"] and sys.stderr.isatty()
    results = []
    for backend in backends:
        own = {**opts, "backend": backend}
        if backend != "latlab":  # --engine-arg is the engine's alone
            own["engine_arg"] = ()
        results.append(run_bench(config, _target(own, config), progress=show))
        if results[-1].interrupted:
            break
    render_all(results)
    if opts["json_path"]:
        write_all_json(results, opts["json_path"])
        click.echo(f"wrote {os.fspath(opts['json_path'])}")
    if opts["csv_path"]:
        write_csv_rows(results, opts["csv_path"])
        click.echo(f"wrote {os.fspath(opts['csv_path'])}")
    for backend, result in zip(backends, results, strict=False):  # one recorded run each
        store = open_store(opts["store_path"], opts["no_store"])
        name = f"{opts['run_name']}-{backend}" if opts["run_name"] else None
        record_run(store, kind="bench", result=result.to_dict(), name=name,
                   tags=opts["tags"])  # fmt: skip
    return _exit_code(results, opts, None)


def _render_cost(document: dict[str, Any], price: Any) -> None:
    from latlab.cost import bench_cost, cost_lines

    document["cost"] = bench_cost(document, price)
    for line in cost_lines(document["cost"]):
        click.echo(line)


def _search(opts: dict[str, Any], config: BenchConfig) -> Any:
    """The capacity search ``--find`` asks for (None without it); the config probes its start."""
    if opts["find"] is None:
        return None
    from latlab.capacity import CapacitySearch, SearchSpec
    from latlab.cli.compare import parse_percent

    chosen = {"--concurrency": opts["concurrency"], "--rate": opts["rate"],
              "--duration": opts["duration"], "--repeats": (opts["repeats"] or 1) > 1}  # fmt: skip
    for flag, given in chosen.items():
        if given:
            raise ConfigError(f"--find chooses each probe's load and size: drop {flag}")
    variable = "concurrency" if opts["find"] == "max-concurrency" else "rate"
    objectives = {k: opts[f"slo_{k}_ms"] for k in ("ttft", "tpot", "e2e")
                  if opts[f"slo_{k}_ms"] is not None}  # fmt: skip
    tolerance = parse_percent(opts["find_tolerance"], "--find-tolerance")
    spec = SearchSpec(variable=variable, objectives=objectives,
                      percentile=opts["slo_percentile"], start=opts["find_start"] or 1.0,
                      limit=opts["find_max"] or (1024.0 if variable == "concurrency" else 1000.0),
                      tolerance=(tolerance or 0.0) / 100,
                      min_requests=opts["num_requests"] or 0)  # fmt: skip
    if variable == "concurrency":
        config.concurrency, config.rate = [int(spec.start)], None
    else:
        config.concurrency, config.rate = None, [spec.start]
    return CapacitySearch(spec=spec, slo=config.slo)


def _render_search(search: Any, interrupted: bool) -> dict[str, Any]:
    from rich.console import Console

    from latlab.capacity.views import answer_lines, frontier_table

    if interrupted:
        search.status = "interrupted"
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(frontier_table(search))
    for line in answer_lines(search):
        console.print(line)
    return search.to_dict()


def _write_files(result: Any, document: dict[str, Any], opts: dict[str, Any]) -> None:
    if opts["json_path"]:
        Path(opts["json_path"]).write_text(json.dumps(document, indent=2) + "\n")
        click.echo(f"wrote {os.fspath(opts['json_path'])}")
    if opts["csv_path"]:
        result.write_csv(opts["csv_path"])
        click.echo(f"wrote {os.fspath(opts['csv_path'])}")


def _exit_code(results: list[Any], opts: dict[str, Any], search: Any) -> int:
    if any(r.interrupted for r in results):
        return 130
    completed = sum(r.completed for r in results)
    failed = sum(r.failed for r in results)
    if completed + failed and completed == 0:
        click.echo("latlab: error: every request failed (see the errors above)", err=True)
        return 1
    if opts["fail_on_error"] and failed:
        return 1
    if search is not None and search.status == "none":
        return 1  # no load meets the SLO: a CI gate should fail
    return 0


def _backends(text: str) -> list[str]:
    """--backend: in-process engines (one, or both side by side), or servers to launch."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    servers = [n for n in names if n in SERVER_BACKENDS]
    engines = [n for n in names if n in IN_PROCESS_BACKENDS]
    if not names or len(servers) + len(engines) != len(names) or (servers and engines):
        raise ConfigError("--backend takes transformers, latlab, or both: transformers,latlab; "
                          f"or servers to launch: {', '.join(SERVER_BACKENDS)} "
                          "(comma-separated)")  # fmt: skip
    if len(set(servers)) != len(servers):
        raise ConfigError(f"--backend {text!r} names a server twice")
    return list(dict.fromkeys(names))


def _per_backend(settings: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Split ``BACKEND:KEY`` settings per backend; unprefixed ones apply to every backend."""
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in settings.items():
        backend, sep, name = key.partition(":")
        if not sep:
            for per in out.values():
                per[key] = value
        elif backend in out:
            out[backend][name] = value
        else:
            raise ConfigError(f"{key!r} names backend {backend!r}, which is not being launched")
    return out


def _bench_servers(opts: dict[str, Any], config: Any, names: list[str], show: bool) -> int:
    """Launch each server (latlab.deploy) on each model, measure it over HTTP, stop it; compare
    them."""
    from latlab.bench.served import bench_servers, comparison_table

    if opts["url"] or opts["callable_spec"]:
        raise ConfigError("--backend vllm / latlab-server launches its own server: drop --url")
    store = open_store(opts["store_path"], opts["no_store"], opts["run_name"], opts["tags"])
    if store is not None:
        store.close()  # opened now so a bad store fails before minutes of launches
    model = opts["model"] or str(_bundled())
    run_dir = Path(opts["run_dir"] or _default_run_dir())
    runs = _server_runs(opts, names, [model, *opts["compare_models"]], run_dir)
    tokenizer = _tokenizer(opts["tokenizer"] or model) if _has_tokenizer(opts, model) else None
    say = (lambda m: click.echo(m, err=True)) if not opts["no_progress"] else None
    results = bench_servers(config, runs, tokenizer=tokenizer, progress=show, say=say)
    for run, result in zip(runs, results, strict=False):
        result.render()
        _keep_server_run(result, run.label or "", opts, run_dir, several=len(runs) > 1)
    if len(results) > 1:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 140).print(comparison_table(results))
    click.echo(f"logs and results: {run_dir}")
    return _exit_code(results, opts, None)


def _server_runs(
    opts: dict[str, Any], names: list[str], models: list[str], run_dir: Path
) -> list[Any]:
    """One launch per (model, backend), labelled ``backend`` or, with several models,
    ``backend-<model folder name>`` (the label names its result files and its run)."""
    from latlab.bench.served import ServerRun
    from latlab.deploy import LaunchSettings, make_backend
    from latlab.deploy.flags import parse_env

    args = _per_backend(_engine_args(opts["engine_arg"]), names)
    env = _per_backend(parse_env(opts["engine_env"], "--engine-env"), names)
    tags = [Path(m.rstrip("/")).name or m for m in models]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"--model and --compare-model need distinct folder names: {tags}")
    return [ServerRun(backend=make_backend(name, vllm_cmd=opts["vllm_cmd"]),
                      settings=LaunchSettings(model=m, engine_args=args[name], env=env[name],
                                              log_dir=run_dir),
                      label=f"{name}-{tag}" if len(models) > 1 else name)
            for m, tag in zip(models, tags, strict=True) for name in names]  # fmt: skip


def _keep_server_run(
    result: Any, name: str, opts: dict[str, Any], run_dir: Path, *, several: bool
) -> None:
    """Write one server's result (run dir, --json/--csv suffixed per server) and record it."""
    document = result.to_dict()
    result.write_json(run_dir / f"{name}.json")
    suffix = f".{name}" if several else ""
    paths = {"json_path": _suffixed(opts["json_path"], suffix),
             "csv_path": _suffixed(opts["csv_path"], suffix)}  # fmt: skip
    _write_files(result, document, paths)
    run_name = f"{opts['run_name']}-{name}" if opts["run_name"] and several else opts["run_name"]
    store = open_store(opts["store_path"], opts["no_store"], run_name, opts["tags"])
    record_run(store, kind="bench", result=document, name=run_name,
               tags=(*opts["tags"], name), source_path=paths["json_path"])  # fmt: skip


def _suffixed(path: str | None, suffix: str) -> str | None:
    if path is None or not suffix:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{suffix}.{ext}" if dot and stem else f"{path}{suffix}"


def _has_tokenizer(opts: dict[str, Any], model: str) -> bool:
    """A tokenizer for exact prompt lengths: --tokenizer, else the model dir's own."""
    return bool(opts["tokenizer"]) or (Path(model) / "tokenizer_config.json").is_file()


def _bundled() -> Any:
    from latlab.assets import bundled_model_path

    return bundled_model_path()


def _default_run_dir() -> str:
    import datetime as dt

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join("latlab-runs", f"bench-{stamp}")
