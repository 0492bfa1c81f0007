"""What a result JSON *is*, in a few words: its kind, target, start time and a one-line headline.

The store keeps these beside each run so ``latlab runs`` lists hundreds of runs without parsing
any result. Every function accepts any JSON a latlab verb wrote (bench, optimize, watch) and
falls back to empty text for keys it does not know.
"""

from __future__ import annotations

from typing import Any

from latlab.errors import RunStoreError


def kind_of(result: dict[str, Any]) -> str:
    """``bench`` / ``optimize`` / ... from the document's own schema marker."""
    schema = str(result.get("schema_version") or "")
    if schema.startswith("latlab.bench/"):
        return "bench"
    kind = result.get("kind")
    if isinstance(kind, str) and kind.startswith("latlab."):
        return kind.removeprefix("latlab.")
    raise RunStoreError(
        "not a latlab result (no 'schema_version: latlab.bench/N' or 'kind: latlab.*' key): "
        "give a file written by `latlab bench --json` or `latlab optimize`"
    )


def created_utc(result: dict[str, Any]) -> str:
    return str(result.get("created_utc") or result.get("started_at") or "")


def target_name(kind: str, result: dict[str, Any]) -> str:
    target = result.get("target")
    if isinstance(target, dict) and target.get("name"):
        return str(target["name"])
    if kind == "optimize":
        return str(result.get("model") or "bundled model")
    return ""


def load_label(load: dict[str, Any]) -> str:
    """``concurrency 4`` / ``rate 2.5``: how a load level is named everywhere."""
    return ", ".join(f"{k} {_num(v)}" for k, v in load.items())


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _span(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    if abs(hi - lo) < 10 ** (-digits):
        return f"{lo:,.{digits}f} {unit}"
    return f"{lo:,.{digits}f}-{hi:,.{digits}f} {unit}"


def _bench_headline(result: dict[str, Any]) -> str:
    levels = [lv for lv in result.get("levels") or () if isinstance(lv, dict)]
    if not levels:
        return "no levels measured"
    loads: dict[str, list[str]] = {}
    for lv in levels:
        for key, value in (lv.get("load") or {}).items():
            if key != "repeat" and _num(value) not in loads.setdefault(key, []):
                loads[key].append(_num(value))
    shape = "; ".join(f"{k} {','.join(v)}" for k, v in loads.items())
    repeats = len({(lv.get("load") or {}).get("repeat") for lv in levels})
    if repeats > 1:
        shape += f" x{repeats} repeats"
    sums = [lv.get("summary") or {} for lv in levels]
    ok = sum(int(s.get("completed") or 0) for s in sums)
    failed = sum(int(s.get("failed") or 0) for s in sums)
    ttft = [p for s in sums if (p := (s.get("ttft_ms") or {}).get("p50")) is not None]
    tok_s = [float(s["output_tokens_per_s"]) for s in sums if s.get("output_tokens_per_s")]
    parts = [
        shape,
        f"{ok} ok" + (f", {failed} failed" if failed else ""),
        f"TTFT p50 {_span(ttft, 'ms')}",
        _span(tok_s, "tok/s"),
    ]
    cap = result.get("capacity")
    if isinstance(cap, dict):
        answer = "none" if cap.get("answer") is None else f"{cap['answer']:g}"
        parts.insert(0, f"find max {cap.get('variable')}: {answer} ({cap.get('status')})")
    if result.get("interrupted"):
        parts.append("interrupted")
    return " · ".join(parts)


def _optimize_headline(result: dict[str, Any]) -> str:
    trials = result.get("trials") or []
    adopted = result.get("adopted") or []
    return f"{len(trials)} trials; adopted: {', '.join(adopted) or 'nothing'}"


def headline(kind: str, result: dict[str, Any]) -> str:
    """One line for the listing; empty for kinds this module does not know."""
    if kind == "bench":
        return _bench_headline(result)
    if kind == "optimize":
        return _optimize_headline(result)
    text = result.get("headline")
    return str(text) if text else ""
