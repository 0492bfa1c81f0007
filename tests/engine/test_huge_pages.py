"""Weights move into huge-page memory with their values, shapes and ties intact; nothing moves
where the kernel does not allow it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from latlab.engine import LLM
from latlab.engine.huge_pages import HUGE_PAGE, move_to_huge_pages, thp_mode


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
