"""tinystories/training/progress.py: the step size, the time and memory estimate, and the bar within a step."""
import resource

import torch
from tqdm import tqdm

from tinystories import quickstart
from tinystories.training import progress as progress_module
from tinystories.training.progress import ESTIMATE_MICRO_BATCHES, StepProgress, duration, memory_in_use, step_size


def test_durations_read_as_a_person_would_say_them():
    assert duration(3.24) == "3.2 s"
    assert duration(16 * 60 + 46) == "16 min 46 s"
    assert duration(22 * 3600 + 20 * 60 + 10) == "22 h 20 min"
    assert duration(3 * 86400 + 4 * 3600) == "3 d 4 h"


def test_step_size_counts_every_process():
    assert step_size(32, 32, 1, 512) == ("each optimizer step: 1,024 sequences of 512 tokens = 524,288 tokens "
                                         "(32 micro-batch(es) of 32)")
    assert "= 524,288 tokens (8 micro-batch(es) of 32 per process, 4 processes)" in step_size(32, 8, 4, 512)


def test_memory_is_this_processs_peak_resident_size_on_the_cpu():
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    reported = float(memory_in_use(torch.device("cpu")).split()[0])
    assert abs(reported - peak_gb) < 0.15


def run_micro_batches(device_type: str, micro_steps: int, steps_to_go: int, count: int) -> tuple[list[str], str]:
    said: list[str] = []
    bar = tqdm(total=steps_to_go, disable=True)
    progress = StepProgress(bar, said.append, torch.device(device_type), micro_steps, steps_to_go)
    for index in range(count):
        progress.micro_batch_done(index % micro_steps)
    return said, bar.desc


def test_fast_micro_batches_are_averaged_over_ten_after_the_first():
    said, _ = run_micro_batches("cpu", micro_steps=4, steps_to_go=10, count=ESTIMATE_MICRO_BATCHES)
    assert said == []
    said, description = run_micro_batches("cpu", micro_steps=4, steps_to_go=10, count=30)
    assert len(said) == 1 and said[0].startswith("estimate: ") and "for the 10 step(s) to go" in said[0]
    assert "GB of memory" in said[0] and quickstart.COMMAND not in said[0]  # a short run needs no advice
    assert description.startswith("training (micro-batch ")


def test_slow_micro_batches_are_estimated_after_the_second_from_all_but_the_first(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    said: list[str] = []
    progress = StepProgress(tqdm(disable=True), said.append, torch.device("cpu"), micro_steps=1, steps_to_go=8)
    now[0] = 40.0  # warm-up makes the first micro-batch slow; it is not counted
    progress.micro_batch_done(0)
    assert said == []
    now[0] = 52.5
    progress.micro_batch_done(0)
    assert said == ["estimate: 12.5 s per micro-batch, so about 12.5 s per optimizer step and 1 min 40 s for the 8 "
                    f"step(s) to go (evaluations extra); {memory_in_use(torch.device('cpu'))}"]
    now[0] = 65.0
    progress.micro_batch_done(0)
    assert len(said) == 1


def test_a_long_cpu_run_names_the_quick_start():
    progress = StepProgress(tqdm(disable=True), print, torch.device("cpu"), micro_steps=32, steps_to_go=80)
    line = progress.estimate(31.4)  # what the seed's defaults took per micro-batch on two CPU cores
    assert "about 16 min 45 s per optimizer step and 22 h 19 min for the 80 step(s) to go" in line
    assert line.endswith(quickstart.COMMAND)
