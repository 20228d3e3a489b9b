"""Checks of values a user sets, shared by every config and script so that each mistake reads the same."""
from __future__ import annotations

from typing import Any, Iterable

from model.model import Config, preset
from tinystories.errors import UserError

PRESET_HELP = "model preset: 33M (the specification's), small, tiny, nano"


def require_at_least(settings: Any, names: Iterable[str], minimum: int = 1) -> None:
    """Each named field of `settings` (unset, None, is allowed) is at least `minimum`, as `--name` says."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name} must be at least {minimum}, got {value}")


def require_token_ids_within(largest: int, vocab_size: int, what: str, remedy: str = "", smallest: int = 0) -> None:
    """Token ids from `smallest` to `largest` fit a vocabulary of `vocab_size` (an embedding lookup outside it
    would crash)."""
    if largest >= vocab_size:
        problem = f"token ids up to {largest:,}, beyond"
    elif smallest < 0:
        problem = f"negative token ids (down to {smallest:,}), outside"
    else:
        return
    raise UserError(f"{what} has {problem} the model's vocabulary of {vocab_size:,}"
                    + (f"; {remedy}" if remedy else ""))


def preset_config(name: str, **overrides: Any) -> Config:
    """The named preset with overrides; an unknown name or an impossible shape is a user error."""
    try:
        return preset(name, **overrides)
    except ValueError as error:
        raise UserError(str(error)) from None
