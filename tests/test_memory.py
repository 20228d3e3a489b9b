"""tinystories/memory.py: its estimates bound measured peaks, and too-large sizes are refused in one line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.model import preset
from tinystories import memory
from tinystories.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process, so that its peak resident memory (ru_maxrss) is this work's alone.
MEASURE = """
import resource, sys
import numpy as np
import torch
from model.model import Model, preset
from tinystories import memory
from tinystories.evaluation import stream_loss
from tinystories.sampling import beam_search, decoding_model
from tinystories.subjects import CheckpointSubject
torch.set_num_threads(1)
kind, rows = sys.argv[1], int(sys.argv[2])
model = Model(preset("tiny")).eval()
config, cpu = model.config, torch.device("cpu")
if kind == "beams":
    decoder = decoding_model(model)
    beam_search(decoder, list(range(10)), 3, 2)  # warm-up: kernels' one-off buffers are not per-beam memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    beam_search(decoder, list(range(10)), 3, rows)
    estimate = rows * memory.sequence_bytes(config, 13)
else:
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, rows * config.block_size + 1).astype(np.uint16)
    subject = CheckpointSubject(model, block_size=config.block_size)
    stream_loss(subject, tokens[:config.block_size + 1], 1, progress=False)  # warm-up, as above
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stream_loss(subject, tokens, rows, progress=False)
    estimate = rows * memory.window_bytes(config, config.block_size) + memory.loss_bytes(cpu)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, estimate)
"""


@pytest.mark.parametrize("kind, rows", [("evaluation", 384)])
def test_estimates_bound_the_measured_peak_within_a_small_factor(kind, rows):
    result = subprocess.run([sys.executable, "-c", MEASURE, kind, str(rows)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured, estimate = map(int, result.stdout.split())
    print(f"{kind} x{rows}: measured {measured / 1e6:.0f} MB, estimated {estimate / 1e6:.0f} MB")
    assert measured <= estimate <= 2.5 * measured


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
