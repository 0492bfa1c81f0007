"""``latlab bench --find``: the highest load within an SLO percentile, with intervals."""

from latlab.capacity.search import CapacitySearch, Probe, SearchSpec, judge

__all__ = ["CapacitySearch", "Probe", "SearchSpec", "judge"]
