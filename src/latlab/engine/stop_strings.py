"""Stop strings matched by an Aho-Corasick automaton: cost per character independent of the list.

Searching each stop string in each step's new text costs the number of stop strings times
their length, per step: a request with a million stop strings made every other request in
the batch wait seconds per token. The automaton reads each generated character once and
follows failure links whose total is bounded by the characters read (amortised O(1) per
character), whatever the number of stop strings.

``StopStrings`` (the automaton) is built once, where the sampling parameters are made (the
server does that off its event loop and off the engine thread), and shared by every request
using those parameters; each request walks it with its own ``StopMatcher``. The matcher also
says how much of the text is a stop string in progress (``partial``): only that much has to be
held back from a stream, instead of the longest stop string's length.
"""

from __future__ import annotations

from collections import deque


class StopStrings:
    """The automaton of a list of stop strings (immutable once built)."""

    __slots__ = ("depth", "fail", "goto", "match_len", "stops")

    def __init__(self, stops: list[str]) -> None:
        self.stops = tuple(stops)
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        # Longest stop string ending at this state (itself or through failure links); 0: none.
        self.match_len = [0]
        for stop in self.stops:
            self._insert(stop)
        self.fail = self._link()

    def _insert(self, stop: str) -> None:
        goto, depth, match_len = self.goto, self.depth, self.match_len
        state = 0
        for char in stop:
            nxt = goto[state].get(char)
            if nxt is None:
                nxt = len(goto)
                goto[state][char] = nxt
                goto.append({})
                depth.append(depth[state] + 1)
                match_len.append(0)
            state = nxt
        match_len[state] = max(match_len[state], len(stop))

    def _link(self) -> list[int]:
        goto, match_len = self.goto, self.match_len
        fail = [0] * len(goto)
        queue = deque(goto[0].values())  # breadth first: a failure target is always shallower
        while queue:
            state = queue.popleft()
            for char, nxt in goto[state].items():
                queue.append(nxt)
                back = fail[state]
                while back and char not in goto[back]:
                    back = fail[back]
                target = goto[back].get(char, 0)
                fail[nxt] = target if target != nxt else 0
                match_len[nxt] = max(match_len[nxt], match_len[fail[nxt]])
        return fail

    def matcher(self) -> StopMatcher:
        return StopMatcher(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopStrings) and other.stops == self.stops

    def __hash__(self) -> int:
        return hash(self.stops)

    def __repr__(self) -> str:
        return f"StopStrings({list(self.stops)!r})"


class StopMatcher:
    """One request's walk over a StopStrings automaton: feed text in order."""

    __slots__ = ("_automaton", "_state")

    def __init__(self, automaton: StopStrings) -> None:
        self._automaton = automaton
        self._state = 0

    def feed(self, text: str) -> int | None:
        """Advance over ``text``; the offset in ``text`` where the first stop string to
        complete begins (negative when it began in earlier text), or None."""
        automaton = self._automaton
        goto, fail, match_len = automaton.goto, automaton.fail, automaton.match_len
        state = self._state
        for index, char in enumerate(text):
            while state and char not in goto[state]:
                state = fail[state]
            state = goto[state].get(char, 0)
            if match_len[state]:
                self._state = 0
                return index + 1 - match_len[state]
        self._state = state
        return None

    @property
    def partial(self) -> int:
        """Characters at the end of the text fed so far that may still begin a stop string."""
        return self._automaton.depth[self._state]
