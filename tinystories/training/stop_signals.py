"""Stopping a training run cleanly: SIGTERM (a preemption, torchrun's shutdown) or a first Ctrl-C asks the loop
to stop after the current step and save; a second Ctrl-C stops at once."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Optional

STOPPING_MESSAGE = "stopping after this step; Ctrl-C again to stop now"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """While entered, the first SIGTERM/SIGINT sets `signal_number`, so that the loop finishes its optimizer step,
    saves and returns, and is acknowledged at once; a second one calls `stop_now(first signal number)`.

    A thread answers them, woken by signal.set_wakeup_fd: Python runs a signal handler only between bytecodes of
    the main thread, which can be inside one backward pass for minutes on a CPU.
    """

    def __init__(self, acknowledge: Callable[[str], None], stop_now: Callable[[int], None]) -> None:
        self.acknowledge = acknowledge
        self.stop_now = stop_now
        self.signal_number: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)  # set_wakeup_fd requires it
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, _answered_by_thread)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_end)
        self._thread = threading.Thread(target=self._answer, args=(read_end,), name="stop-request", daemon=True)
        self._thread.start()
        return self

    def _answer(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as signals:
            while received := signals.read(1):
                if received[0] not in STOP_SIGNALS:
                    continue
                if self.signal_number is None:
                    self.signal_number = received[0]
                    self.acknowledge(STOPPING_MESSAGE)
                else:
                    self.stop_now(self.signal_number)

    def __exit__(self, *exception: Any) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        os.close(self._write_end)  # ends the thread's read
        self._thread.join()


def _answered_by_thread(number: int, frame: Any) -> None:
    """A Python handler must be installed for the wakeup byte to be written; StopRequest's thread acts on it."""
