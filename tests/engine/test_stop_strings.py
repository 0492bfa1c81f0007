"""The stop-string matcher agrees with a brute-force search, however the text is chunked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from latlab.engine.stop_strings import StopStrings

ALPHABET = "abc\u00e9 "
texts = st.text(alphabet=ALPHABET, max_size=40)
stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), min_size=1, max_size=6)


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the stop string that completes first begins (the longest, if several end there)."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            return end - max(map(len, ending))
    return None


def _feed_in_chunks(text: str, stops: list[str], cuts: list[int]) -> tuple[int | None, list[int]]:
    matcher = StopStrings(stops).matcher()
    fed, partials = 0, []
    for cut in [*sorted(set(cuts)), len(text)]:
        chunk = text[fed:cut]
        offset = matcher.feed(chunk)
        if offset is not None:
            return fed + offset, partials
        fed = max(fed, cut)
        partials.append(matcher.partial)
    return None, partials


@settings(max_examples=400, deadline=None)
@given(texts, stop_lists, st.lists(st.integers(0, 40), max_size=8))
def test_matcher_matches_brute_force(text, stops, cuts):
    cuts = [c for c in cuts if c <= len(text)]
    found, _ = _feed_in_chunks(text, stops, cuts)
    assert found == _first_stop(text, stops)


@settings(max_examples=300, deadline=None)
@given(texts, stop_lists)
def test_partial_is_the_longest_suffix_that_begins_a_stop(text, stops):
    found, partials = _feed_in_chunks(text, stops, list(range(1, len(text))))
    if found is not None:
        return
    for end, partial in enumerate(partials, start=1):
        prefix = text[:end]
        expected = max(
            (
                k
                for k in range(len(prefix) + 1)
                if any(s.startswith(prefix[len(prefix) - k :]) for s in stops)
            ),
            default=0,
        )
        assert partial == expected


def test_stops_sharing_prefixes_and_suffixes():
    matcher = StopStrings(["she", "he", "hers"]).matcher()
    assert matcher.feed("u") is None and matcher.partial == 0
    assert matcher.feed("s") is None and matcher.partial == 1  # may begin "she"
    assert matcher.feed("h") is None and matcher.partial == 2
    assert matcher.feed("e") == -2  # "she" (and "he") end here; "she" began 2 chars back


def test_a_long_stop_string_slides_along_text_that_keeps_beginning_it():
    """The window drops characters from its front as the text runs past a stop's start."""
    stop = "a" * 50 + "b"
    matcher = StopStrings([stop, "zz"]).matcher()
    for _ in range(4):
        assert matcher.feed("a" * 50) is None
        assert matcher.partial == 50  # only the last 50 a's can still begin the stop
    assert matcher.feed("ab") == 1 - 50


def test_duplicates_and_empty_strings_in_the_list():
    matcher = StopStrings(["", "ab", "ab", "b"]).matcher()
    assert matcher.feed("xa") is None and matcher.partial == 1
    assert matcher.feed("b") == -1  # "ab" and "b" end together: the longer one wins
