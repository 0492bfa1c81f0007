"""The decoding loops: prompt lookup must reproduce plain greedy output exactly."""

from __future__ import annotations

import pytest

from latlab.model_files import load_causal_lm
from latlab.optimize.generation import SpeculationStats, greedy_chunks, prompt_lookup_chunks


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(tiny_model_dir, dtype="float32")


@pytest.mark.parametrize("max_new", [1, 5, 17])
def test_prompt_lookup_equals_greedy(model, max_new):
    prompt = [11, 12, 13, 14, 15] * 6  # repetitive, so drafts exist
    plain = [t for chunk in greedy_chunks(model, prompt, max_new) for t in chunk]
    stats = SpeculationStats()
    chunks = list(prompt_lookup_chunks(model, prompt, max_new, stats=stats))
    assert [t for chunk in chunks for t in chunk] == plain
    assert len(plain) == max_new
    assert stats.forward_passes == len(chunks) <= max_new


def test_eos_stops_both_loops(model):
    prompt = [21, 22, 23, 24]
    plain = [t for chunk in greedy_chunks(model, prompt, 12) for t in chunk]
    eos = {plain[3]}
    first = plain.index(plain[3])
    stopped = [t for chunk in greedy_chunks(model, prompt, 12, eos) for t in chunk]
    looked = [t for chunk in prompt_lookup_chunks(model, prompt, 12, eos) for t in chunk]
    assert stopped == plain[: first + 1] == looked
