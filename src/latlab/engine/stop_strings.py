"""Stop strings matched a character at a time, with no per-request build in Python.

Two earlier designs each let one request slow the others. Searching every stop string in
every step's new text (``str.find`` per string) costs the number of stop strings per step: a
million of them made every request in the batch wait seconds per token. An Aho-Corasick
automaton fixed the per-step cost, but building it is a pure-Python loop over every character
of every stop string: 64 strings of 1,000 characters (within the server's limits) took 120-190
ms of CPU per request, holding the GIL against the engine and the event loop, and slowed a
concurrent stream 3.6x.

Here a request's stop strings are only sorted and put in a set (C-speed, no loop over their
characters). Each request's ``StopMatcher`` keeps one string, the *window*: the longest end of
the text so far that is still the beginning of some stop string. For each new character the
window grows by it and loses characters from its front until it begins a stop string again (a
binary search in the sorted list); a stop string that completes here ends the window, so only
the window's ends whose length is a stop string's length are looked up in the set. Every
character enters the window once and leaves it at most once, so the cost per character does
not grow with the number of stop strings (a binary search: logarithmic), and the window's
length is exactly how much text a stream must hold back (``partial``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import itemgetter


class StopStrings:
    """A request's stop strings, indexed for matching (immutable once built)."""

    __slots__ = ("_first", "_last", "_lengths", "_set", "_sorted", "stops")

    def __init__(self, stops: list[str]) -> None:
        self.stops = tuple(stops)
        unique = set(filter(None, self.stops))  # an empty stop string never matches
        self._set = frozenset(unique)
        self._sorted = sorted(unique)
        self._lengths = sorted(set(map(len, unique)))
        self._first = frozenset(map(itemgetter(0), unique))
        self._last = frozenset(map(itemgetter(-1), unique))

    def open_end(self, window: str) -> tuple[str, str]:
        """The longest end of ``window`` that begins some stop string, and that stop string
        (both '' if none)."""
        ordered = self._sorted
        while window:
            index = bisect_left(ordered, window)
            if index < len(ordered) and ordered[index].startswith(window):
                return window, ordered[index]
            window = window[1:]
        return "", ""

    def ending(self, window: str) -> int:
        """Length of the longest stop string ``window`` ends with; 0 if none does."""
        if window[-1] not in self._last:
            return 0
        size = len(window)
        lengths, stops = self._lengths, self._set
        for index in range(bisect_right(lengths, size) - 1, -1, -1):
            if window[size - lengths[index] :] in stops:
                return lengths[index]
        return 0

    def can_begin(self, char: str) -> bool:
        return char in self._first

    def matcher(self) -> StopMatcher:
        return StopMatcher(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopStrings) and other.stops == self.stops

    def __hash__(self) -> int:
        return hash(self.stops)

    def __repr__(self) -> str:
        return f"StopStrings({list(self.stops)!r})"


class StopMatcher:
    """One request's scan for its stop strings: feed text in order."""

    __slots__ = ("_begun", "_stops", "_window")

    def __init__(self, stops: StopStrings) -> None:
        self._stops = stops
        self._window = ""  # the longest end of the text that begins a stop string
        self._begun = ""  # a stop string the window begins

    def feed(self, text: str) -> int | None:
        """Advance over ``text``; the offset in ``text`` where the first stop string to
        complete begins (the longest, if several complete at once; negative when it began
        in earlier text), or None."""
        stops, window, begun = self._stops, self._window, self._begun
        for index, char in enumerate(text):
            if len(window) < len(begun) and begun[len(window)] == char:
                window += char  # still the beginning of the same stop string
            elif window or stops.can_begin(char):
                window, begun = stops.open_end(window + char)
            else:
                continue  # the common case: nothing in progress, nothing begins here
            length = stops.ending(window) if window else 0
            if length:
                self._window = self._begun = ""
                return index + 1 - length
        self._window, self._begun = window, begun
        return None

    @property
    def partial(self) -> int:
        """Characters at the end of the text fed so far that may still begin a stop string."""
        return len(self._window)
