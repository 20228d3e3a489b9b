"""User errors: mistakes a user can make (bad arguments, missing or corrupt files, empty data).

Scripts report them as one line on stderr and exit with status 2, never with a traceback. Under torchrun every
process meets the same error (or learns of rank 0's, see training/distributed.py's main_first): rank 0 alone
prints the line, and every process runs what was registered with `before_exit` (distributed.py leaves the
process group there) and exits with the same status.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Optional

USER_ERROR_EXIT_STATUS = 2
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report it
_BEFORE_EXIT: list[Callable[[], None]] = []


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name), to quote inside a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PeerFailed(Exception):
    """On a torchrun process other than rank 0: rank 0 failed at a step all processes share and reports it."""

    def __init__(self, exit_status: int) -> None:
        super().__init__(f"rank 0 stopped with exit status {exit_status}")
        self.exit_status = exit_status


def exit_status_of(error: Optional[BaseException]) -> int:
    """The status a script exits with after `error` (0 for none)."""
    if error is None:
        return 0
    if isinstance(error, UserError):
        return USER_ERROR_EXIT_STATUS
    if isinstance(error, PeerFailed):
        return error.exit_status
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED_EXIT_STATUS
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 1


def run_main(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError becomes one stderr line and exit status 2, Ctrl-C exit status 130."""
    try:
        main()
    except UserError as error:
        _exit(f"error: {error}", USER_ERROR_EXIT_STATUS)
    except PeerFailed as failure:
        _exit(None, failure.exit_status)
    except KeyboardInterrupt:
        # Ctrl-C: every file the scripts write is written atomically, so there is nothing to clean up.
        _exit("interrupted", INTERRUPTED_EXIT_STATUS)


def before_exit(callback: Callable[[], None]) -> None:
    """Have run_main call `callback` when a script stops on an error or Ctrl-C, before it exits."""
    if callback not in _BEFORE_EXIT:
        _BEFORE_EXIT.append(callback)


def _exit(message: Optional[str], status: int) -> NoReturn:
    if message is not None and os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)
    for callback in _BEFORE_EXIT:
        callback()
    sys.exit(status)
