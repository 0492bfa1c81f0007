"""Read a Prometheus text exposition (a server's /metrics) into plain samples.

Used by ``latlab watch`` (the server's view of the same requests), by ``latlab alerts
--metrics-url`` (the bucket edges a server really exports) and by the tests that check every
dashboard query against a live scrape. Parsing goes through prometheus_client's parser, which
follows the format's escaping rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from latlab.errors import TargetError


@dataclass(kw_only=True, frozen=True, slots=True)
class Sample:
    name: str  # the series name as exposed: 'x_bucket', 'x_total', 'x'
    labels: dict[str, str]
    value: float


@dataclass(kw_only=True, slots=True)
class Scrape:
    """All samples of one /metrics answer, by series name."""

    samples: list[Sample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)  # family name -> counter|gauge|...

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        try:
            for family in text_string_to_metric_families(text):
                scrape.types[family.name] = family.type
                for s in family.samples:
                    sample = Sample(name=s.name, labels=dict(s.labels), value=float(s.value))
                    scrape.samples.append(sample)
        except (ValueError, TypeError, IndexError) as exc:
            raise TargetError(f"not a Prometheus text exposition ({exc})") from None
        return scrape

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of every series named ``name`` (matching ``labels``); None when there is none."""
        found = self.select(name, **labels)
        return math.fsum(s.value for s in found) if found else None

    def histogram(self, base: str) -> Histogram | None:
        """The histogram ``base`` summed over all its label sets (engines, models)."""
        buckets: dict[float, float] = {}
        for s in self.select(f"{base}_bucket"):
            edge = float(s.labels.get("le", "nan"))
            buckets[edge] = buckets.get(edge, 0.0) + s.value
        if not buckets:
            return None
        return Histogram(
            edges=tuple(sorted(buckets)),
            counts=tuple(buckets[e] for e in sorted(buckets)),
            total=self.total(f"{base}_count") or 0.0,
            sum=self.total(f"{base}_sum") or 0.0,
        )

    def edges(self, base: str) -> tuple[float, ...]:
        """Finite bucket edges of histogram ``base`` as exported ('+Inf' left out)."""
        hist = self.histogram(base)
        return tuple(e for e in hist.edges if math.isfinite(e)) if hist else ()


@dataclass(kw_only=True, frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts of one histogram at one moment."""

    edges: tuple[float, ...]  # ascending, the last is +Inf
    counts: tuple[float, ...]  # cumulative, as exposed
    total: float
    sum: float

    def minus(self, earlier: Histogram | None) -> Histogram:
        """What was observed since ``earlier`` (a restart, i.e. a counter reset, counts anew)."""
        if earlier is None or earlier.edges != self.edges or self.total < earlier.total:
            return self
        return Histogram(
            edges=self.edges,
            counts=tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)),
            total=self.total - earlier.total,
            sum=self.sum - earlier.sum,
        )

    def mean(self) -> float | None:
        return self.sum / self.total if self.total > 0 else None

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket, as PromQL's histogram_quantile does."""
        if self.total <= 0:
            return None
        rank = q * self.total
        lower_edge, lower_count = 0.0, 0.0
        for edge, count in zip(self.edges, self.counts, strict=True):
            if count >= rank:
                if math.isinf(edge):
                    return lower_edge  # beyond the last finite edge: its value, as PromQL
                width = count - lower_count
                frac = (rank - lower_count) / width if width > 0 else 1.0
                return lower_edge + (edge - lower_edge) * frac
            lower_edge, lower_count = edge, count
        return lower_edge


def fetch(url: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None) -> Scrape:
    """GET ``url`` and parse it; TargetError (one line) when it is not a Prometheus endpoint."""
    try:
        if client is not None:
            resp = client.get(url, timeout=timeout_s)
        else:
            resp = httpx.get(url, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise TargetError(
            f"cannot read {url} ({type(exc).__name__}: {exc or 'no reply'})"
        ) from None
    if resp.status_code != 200:
        raise TargetError(f"{url} answered HTTP {resp.status_code}, not Prometheus metrics")
    scrape = Scrape.parse(resp.text)
    if not scrape.samples:
        raise TargetError(f"{url} answered no Prometheus metrics")
    return scrape
