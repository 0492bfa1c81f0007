"""Weights move into huge-page memory with their values, shapes and ties intact, and the KV
cache is allocated there; nothing moves where the kernel does not allow it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from latlab.engine import LLM, SamplingParams
from latlab.engine.huge_pages import (
    HUGE_PAGE,
    huge_pages_allowed,
    move_to_huge_pages,
    thp_mode,
    zeros_in_huge_pages,
)

HUGE_HERE = huge_pages_allowed(thp_mode())


def _thp_eligible(tensor: torch.Tensor) -> bool:
    """Whether the mapping holding ``tensor`` may get huge pages (/proc/self/smaps)."""
    ptr, inside = tensor.data_ptr(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if not head.endswith(":"):  # a mapping's first line: its address range
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= ptr < hi
        elif inside and head == "THPeligible:":
            return line.split()[1] == "1"
    raise AssertionError("no mapping holds the tensor")


def _module() -> nn.Module:
    module = nn.Module()
    module.big = nn.Linear(1024, 600, bias=False)  # 2.4 MB: moves
    module.small = nn.Linear(16, 16)  # stays
    module.tied = nn.Linear(1024, 600, bias=False)
    module.tied.weight = module.big.weight
    module.register_buffer("scales", torch.arange(HUGE_PAGE // 4, dtype=torch.float32))
    return module


def test_large_tensors_move_with_values_and_ties():
    module = _module()
    before = {name: t.clone() for name, t in module.state_dict().items()}
    small_ptr = module.small.weight.data_ptr()
    moved = move_to_huge_pages(module, mode="madvise")
    assert moved.moved_bytes >= 1024 * 600 * 4 + HUGE_PAGE
    assert "2 weight tensors" in moved.reason
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert module.tied.weight is module.big.weight
    assert module.small.weight.data_ptr() == small_ptr
    x = torch.randn(2, 1024)
    assert module.big(x).shape == (2, 600)


def test_nothing_moves_where_the_kernel_says_never():
    module = _module()
    ptr = module.big.weight.data_ptr()
    moved = move_to_huge_pages(module, mode="never")
    assert moved.moved_bytes == 0 and "never" in moved.reason and not moved.available
    assert module.big.weight.data_ptr() == ptr


def test_thp_mode_reads_the_bracketed_choice(tmp_path: Path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(setting) == "madvise"
    assert thp_mode(tmp_path / "missing") == "unavailable"


def test_engine_reports_its_choice(tiny_model_dir):
    off = LLM(str(tiny_model_dir), huge_pages=False).engine.describe()
    assert off["huge_pages"] == "off: huge_pages=False" and off["huge_page_bytes"] == 0
    auto = LLM(str(tiny_model_dir)).engine.describe()  # its tensors are all under 2 MiB
    assert auto["huge_page_bytes"] == 0 and auto["huge_pages"].startswith("off")
    forced = LLM(str(tiny_model_dir), huge_pages=True).engine.describe()  # nothing to move: fine
    assert forced["huge_pages"] == "off: no tensor of 2 MiB or more"


def test_zeros_in_huge_pages_are_separate_zeroed_tensors():
    caches = zeros_in_huge_pages(3, (2, 5, 16, 8), torch.bfloat16)
    assert [c.shape for c in caches] == [(2, 5, 16, 8)] * 3
    assert all(c.dtype == torch.bfloat16 and c.is_contiguous() for c in caches)
    assert all(not c.any() for c in caches)
    caches[1].fill_(1.5)  # the tensors do not overlap
    assert not caches[0].any() and not caches[2].any() and bool((caches[1] == 1.5).all())


@pytest.mark.skipif(not HUGE_HERE, reason=f"transparent huge pages {thp_mode()} here")
def test_zeros_in_huge_pages_lie_in_memory_madvised_for_them():
    (cache,) = zeros_in_huge_pages(1, (4, 64, 16, 64), torch.float32)
    assert _thp_eligible(cache)
    if thp_mode() == "madvise":  # ("always" gives torch's own large tensors huge pages too)
        assert not _thp_eligible(torch.zeros(4, 64, 16, 64))


def test_engine_kv_cache_pages_follow_the_setting(tiny_model_dir):
    off_llm, auto_llm = LLM(str(tiny_model_dir), huge_pages=False), LLM(str(tiny_model_dir))
    off = off_llm.engine
    assert off.describe()["kv_cache_pages"] == "4 KiB pages"
    if thp_mode() != "always":  # under "always" the kernel may give any memory huge pages
        assert not _thp_eligible(off.runner.kv_caches[0][0])
    auto = auto_llm.engine
    pages = auto.describe()["kv_cache_pages"]
    assert pages.startswith("huge pages") == HUGE_HERE, pages
    assert f"in {pages}" in auto.summary()
    for k, v in auto.runner.kv_caches:
        if HUGE_HERE:
            assert _thp_eligible(k) and _thp_eligible(v)
        else:  # THP never (or unavailable): no memory gets huge pages
            assert not _thp_eligible(k) and not _thp_eligible(v)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[1, 5, 9], [7, 7, 3, 2]]
    got = [o.token_ids for o in auto_llm.generate(prompts, params)]
    assert got == [o.token_ids for o in off_llm.generate(prompts, params)]
