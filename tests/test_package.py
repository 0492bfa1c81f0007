"""The base package: importable without torch, cheap to import, versioned."""

import subprocess
import sys
import textwrap

import latlab

# Runs Python with torch, transformers and fastapi made unimportable, as on a machine where
# only the base install (the bench client) is present.
_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "fastapi"}:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _run_without_heavy_deps(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + code], capture_output=True, text=True, check=False
    )


def test_version_is_exposed():
    assert latlab.__version__.count(".") == 2


def test_import_does_not_pull_torch():
    code = "import sys, latlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_base_modules_import_with_torch_blocked():
    modules = ["latlab", "latlab.cli", "latlab.cli.prune", "latlab.cli.distill", "latlab.errors",
               "latlab.plan.kv", "latlab.runs", "latlab.dtypes", "latlab.settings",
               "latlab.engine.config", "latlab.serve.options", "latlab.cli.serve",
               "latlab.environment"]  # fmt: skip
    out = _run_without_heavy_deps(
        "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    )
    assert out.returncode == 0, out.stderr


def test_watch_and_monitor_import_with_torch_and_fastapi_blocked():
    # `latlab watch`, `alerts` and `dashboard` run where only the bench client is installed.
    modules = ["latlab.watch", "latlab.watch.loop", "latlab.monitor.generate",
               "latlab.monitor.dashboard", "latlab.monitor.preview", "latlab.cli.watch",
               "latlab.cli.alerts", "latlab.cli.dashboard",
               "latlab.testing.prometheus"]  # fmt: skip
    out = _run_without_heavy_deps(
        "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    )
    assert out.returncode == 0, out.stderr


def test_base_import_pulls_only_the_standard_library():
    # The import-cost budget (0.3 s) is met by importing nothing heavy; benchmarks/import_cost.py
    # reports the time itself.
    code = (
        "import sys; before = set(sys.modules); import latlab; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    third_party = set(out.stdout.split()) - set(sys.stdlib_module_names) - {"latlab"}
    assert third_party == set()


def test_unknown_public_name_raises_attribute_error():
    try:
        latlab.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_http_protection_imports_without_torch_or_fastapi():
    # The gateway reuses these; they must not pull the engine or FastAPI.
    modules = ["latlab.serve.guard", "latlab.serve.connections", "latlab.serve.server"]
    out = _run_without_heavy_deps(
        "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    )
    assert out.returncode == 0, out.stderr


def test_guard_pulls_only_the_standard_library_and_starlette():
    code = (
        "import sys; before = set(sys.modules); import latlab.serve.guard as g; "
        "g.Guard(lambda *a: None, g.GuardConfig(allowed_origins=('https://a.example',))); "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    third_party = set(out.stdout.split()) - set(sys.stdlib_module_names) - {"latlab"}
    assert third_party <= {"starlette", "anyio", "sniffio", "idna", "typing_extensions"}


def test_gateway_imports_with_torch_transformers_and_fastapi_blocked():
    modules = ["latlab.gateway", "latlab.gateway.app", "latlab.gateway.server",
               "latlab.cli.gateway"]  # fmt: skip
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "import sys; assert 'torch' not in sys.modules\n"
    out = _run_without_heavy_deps(code)
    assert out.returncode == 0, out.stderr


def test_run_store_imports_only_the_standard_library():
    code = (
        "import sys; import latlab; before = set(sys.modules); import latlab.runs; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) - set(sys.stdlib_module_names) - {"latlab"} == set()
