"""``python -m latlab`` is the ``latlab`` command (how latlab launches ``latlab serve``)."""

from latlab.cli import run

if __name__ == "__main__":
    run()
