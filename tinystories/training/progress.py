"""What a training run tells its user while it runs: the size of an optimizer step before the first one, an
estimate of the time and memory once the first micro-batches have run, and a bar that moves within a long
optimizer step, so that a slow run says how slow it is instead of looking frozen."""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable

import torch
from tqdm import tqdm

from tinystories import quickstart

LONG_CPU_RUN_SECONDS = 3600  # beyond an hour on a CPU, the estimate points at the quick start
REFRESH_SECONDS = 0.5  # the bar's micro-batch count is redrawn at most this often
# The estimate averages the micro-batches after the first (which pays for warm-up) until it has this many
# or this much time: one slow step (the optimizer's first, a busy moment) then does not dominate it.
ESTIMATE_MICRO_BATCHES = 10
ESTIMATE_SECONDS = 10.0


def duration(seconds: float) -> str:
    """A rough length of time for a person: 3.2 s, 16 min 46 s, 22 h 20 min, 3 d 4 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"


def memory_in_use(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB of GPU memory (peak allocated)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kibibytes on Linux, bytes on macOS
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return f"{peak_bytes / 1e9:.1f} GB of memory (peak resident size of this process)"


def step_size(batch_size: int, micro_steps: int, world_size: int, block_size: int) -> str:
    """The line train.py prints before its first step."""
    sequences = batch_size * micro_steps * world_size
    per_process = f" per process, {world_size} processes" if world_size > 1 else ""
    return (f"each optimizer step: {sequences:,} sequences of {block_size:,} tokens = {sequences * block_size:,} "
            f"tokens ({micro_steps:,} micro-batch(es) of {batch_size:,}{per_process})")


class StepProgress:
    """Follows the micro-batches of a run: it prints the estimate once the micro-batches after the first (which
    also pays for warm-up) number ESTIMATE_MICRO_BATCHES or have taken ESTIMATE_SECONDS (so after the second
    one of a slow run), and within an optimizer step of several micro-batches it shows which one is running."""

    def __init__(self, bar: tqdm, say: Callable[[str], None], device: torch.device, micro_steps: int,
                 steps_to_go: int) -> None:
        self.bar = bar
        self.say = say
        self.device = device
        self.micro_steps = micro_steps
        self.steps_to_go = steps_to_go
        self.finished = 0  # micro-batches finished in this run
        self.first_finished_at = 0.0
        self.estimated = False
        self.last_refresh = 0.0

    def micro_batch_done(self, index: int) -> None:
        """Called after micro-batch `index` (0-based) of the current optimizer step has run."""
        self.finished += 1
        if not self.estimated:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # until the estimate: the times must include the device's work
            now = time.perf_counter()
            timed, elapsed = self.finished - 1, now - self.first_finished_at
            if self.finished == 1:
                self.first_finished_at = now
            elif timed >= ESTIMATE_MICRO_BATCHES or elapsed >= ESTIMATE_SECONDS:
                self.estimated = True
                self.say(self.estimate(elapsed / timed))
        now = time.perf_counter()
        if self.micro_steps > 1 and now - self.last_refresh >= REFRESH_SECONDS:
            self.last_refresh = now
            self.bar.set_description_str(f"training (micro-batch {index + 1:,}/{self.micro_steps:,})")

    def estimate(self, seconds_per_micro_batch: float) -> str:
        per_step = seconds_per_micro_batch * self.micro_steps
        whole = per_step * self.steps_to_go
        line = (f"estimate: {duration(seconds_per_micro_batch)} per micro-batch, so about {duration(per_step)} per "
                f"optimizer step and {duration(whole)} for the {self.steps_to_go:,} step(s) to go (evaluations "
                f"extra); {memory_in_use(self.device)}")
        if self.device.type == "cpu" and whole > LONG_CPU_RUN_SECONDS:
            line += (f". That is long for a CPU: the CPU quick start trains a tiny model in minutes: "
                     f"{quickstart.COMMAND}")
        return line
