"""``latlab watch``: a bounded synthetic probe that keeps checking the SLO after optimizing.

Data flows one way: ``probe`` sends the request mix with the bench client's OpenAI target and
fills ``RequestRecord``s; ``window`` evaluates the SLO over the last ``--window``; ``server``
reads the server's /metrics for its view of the same time; ``exporter`` publishes both for
Prometheus; ``notify`` runs ``--on-breach`` and posts webhooks; ``view`` shows it; ``sink``
keeps every probe; ``loop`` ties them together. Imports neither torch nor FastAPI.
"""

from latlab.watch.config import WatchConfig
from latlab.watch.loop import run_watch

__all__ = ["WatchConfig", "run_watch"]
