"""tinystories/memory.py: too-large sizes are refused in one line naming what fits."""
import pytest
import torch

from model.model import preset
from tinystories import memory
from tinystories.errors import UserError


def test_require_fits_names_the_largest_value_that_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10_500)
    memory.require_fits("--num_beams", 10, 1000, torch.device("cpu"), fixed_bytes=500)  # 10,500 bytes: fits
    with pytest.raises(UserError, match=r"^--num_beams 11 needs about 0.0 GB but cpu has 0.0 GB free; use at most 10$"):
        memory.require_fits("--num_beams", 11, 1000, torch.device("cpu"), fixed_bytes=500)
    with pytest.raises(UserError, match="nothing this size fits"):
        memory.require_fits("--num_beams", 1, 20_000, torch.device("cpu"))


def test_available_memory_is_positive_and_at_most_the_machine(monkeypatch):
    available = memory.available_bytes(torch.device("cpu"))
    import os
    assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_container_limit_lowers_what_is_available(monkeypatch, tmp_path):
    (tmp_path / "memory.max").write_text("3000000000\n")
    (tmp_path / "memory.current").write_text("1000000000\n")
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: 10**12)
    monkeypatch.setattr(memory, "_CGROUP_FILES", [(str(tmp_path / "memory.max"), str(tmp_path / "memory.current"))])
    assert memory.available_bytes(torch.device("cpu")) == 2_000_000_000
    (tmp_path / "memory.max").write_text("max\n")  # no limit
    assert memory.available_bytes(torch.device("cpu")) == 10**12


def test_sizes_grow_with_the_model():
    tiny, small = preset("tiny"), preset("small")
    assert memory.sequence_bytes(tiny, 100) < memory.sequence_bytes(small, 100)
    assert memory.sequence_bytes(tiny, 10**6) == memory.sequence_bytes(tiny, tiny.block_size)  # the window slides
    assert memory.parameter_bytes(tiny) == 4 * sum(p.numel() for p in
                                                   __import__("model.model").model.Model(tiny).parameters())
