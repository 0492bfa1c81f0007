"""``latlab compare``: is B faster or slower than A beyond noise, and what changed between them.

Pure Python on the run store's records (no numpy): see :mod:`latlab.bootstrap` for the method.
"""

from latlab.compare.compare import Comparison, Row, compare_runs
from latlab.compare.figures import DEFAULT_FIGURES, Figure, parse_figure, parse_figures

__all__ = [
    "DEFAULT_FIGURES",
    "Comparison",
    "Figure",
    "Row",
    "compare_runs",
    "parse_figure",
    "parse_figures",
]
