"""User errors: mistakes a user can make (bad arguments, missing or corrupt files, empty data).

Scripts report them as one line on stderr and exit with status 2, never with a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

USER_ERROR_EXIT_STATUS = 2
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report it


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name), to quote inside a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_main(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError becomes one stderr line and exit status 2, Ctrl-C exit status 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_STATUS)
    except KeyboardInterrupt:
        # Ctrl-C: every file the scripts write is written atomically, so there is nothing to clean up.
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_STATUS)
