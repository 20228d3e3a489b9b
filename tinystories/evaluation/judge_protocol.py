"""What is sent to the judge and what comes back: the grading prompt (its version goes into every report and
cache key), and the checks that turn a reply's raw bytes into grades, or into the reason it is unusable. A
reply is bounded in size and parsed defensively: no number, nesting or shape a server sends can crash it."""
from __future__ import annotations

import json
import re
from typing import Any, Optional

# The grading conversation. Change any text below and bump PROMPT_VERSION: cached gradings and reports name it.
PROMPT_VERSION = "tinystories-judge-v1"


CRITERIA = ("grammar", "creativity", "consistency", "plot")


AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}


SEPARATOR = "***"


SYSTEM_PROMPT = "You are a primary-school teacher who grades pupils' writing exercises fairly and briefly."


GRADING_PROMPT = """\
A teacher began the story below. A pupil was given the part before the {separator} separator and wrote \
the part after it. The beginning may stop in the middle of a sentence: the pupil had to finish that sentence \
and go on with the story.

{beginning}{separator}{completion}

First write a short assessment of the pupil's part, in a few sentences: its grammar and spelling, whether it \
fits what the beginning set up, and whether it finished the sentence that was cut. Then give your grades as \
one JSON object on the last line, with nothing after it:
{{"grammar": G, "creativity": C, "consistency": S, "plot": P, "age_group": "X"}}
G, C, S and P are whole numbers from 1 (very poor) to 10 (excellent) for the grammar, the creativity, the \
consistency with the beginning, and how well the plot holds together. X is your guess of the pupil's age \
group: {age_groups}."""


REASK_PROMPT = """\
Your reply did not end with a valid grades object. Reply with that JSON object only: \
{"grammar": G, "creativity": C, "consistency": S, "plot": P, "age_group": "X"}, with whole numbers from 1 \
to 10 and an age group letter from A to F."""


# The most bytes of a reply that are read (or 64 per --judge_max_tokens token, when that is more): a grading is
# a few kilobytes, so a larger body is not one, and reading or parsing it could take any time or memory.
MAX_REPLY_BYTES = 1 << 20


# The most digits of a number in a reply or a cache line: token counts have a few; Python's int() of a number
# of a million digits takes seconds (and beyond 4,300 raises ValueError).
MAX_DIGITS = 30


def grading_messages(beginning: str, completion: str) -> list[dict[str, str]]:
    age_groups = ", ".join(f"{letter} ({ages})" for letter, ages in AGE_GROUPS.items())
    prompt = GRADING_PROMPT.format(separator=SEPARATOR, beginning=beginning, completion=completion,
                                   age_groups=age_groups)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def valid_grades(candidate: Any) -> Optional[dict[str, Any]]:
    if not isinstance(candidate, dict):
        return None
    grades: dict[str, Any] = {}
    for criterion in CRITERIA:
        score = candidate.get(criterion)
        # Strict: whole numbers only (7.5, "7" and true are not grades).
        if type(score) is not int or not 1 <= score <= 10:
            return None
        grades[criterion] = score
    age_group = candidate.get("age_group")
    if not isinstance(age_group, str) or age_group not in AGE_GROUPS:
        return None
    grades["age_group"] = age_group
    return grades


class _LongNumber(ValueError):
    pass


def _short_int(digits: str) -> int:
    if len(digits) > MAX_DIGITS:
        raise _LongNumber(f"a number of {len(digits):,} digits")
    return int(digits)


def load_json(text: str) -> Any:
    """json.loads refusing numbers of more than MAX_DIGITS digits (ValueError); RecursionError when too deep."""
    return json.loads(text, parse_int=_short_int)


# A grades object is flat (numbers and a letter): candidates are the brace pairs with no brace inside, found in
# one pass. Decoding from every "{" instead took minutes on a reply of a million of them.
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_grades(reply: str) -> Optional[tuple[dict[str, Any], str]]:
    """(grades, the assessment before them) from a judge's reply, or None when it holds no valid grades object.

    The last flat JSON object in the reply (no object inside it) that has every criterion as a whole number from
    1 to 10 and an age group letter counts; text around it (an assessment, a code fence) is tolerated.
    """
    found = None
    for match in _FLAT_OBJECT.finditer(reply):
        try:
            candidate = load_json(match.group())
        except (ValueError, RecursionError):
            continue
        grades = valid_grades(candidate)
        if grades is not None:
            found = grades, reply[:match.start()]
    if found is None:
        return None
    grades, before = found
    return grades, before.strip().removesuffix("```json").removesuffix("```").strip()


class RequestFailed(Exception):
    """A request that got no reply for this item; retryable: 429, 5xx, a timeout, a lost connection."""

    def __init__(self, reason: str, retryable: bool = True, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.retryable, self.retry_after = retryable, retry_after


def unusable_reply(what: str) -> RequestFailed:
    return RequestFailed(f"a reply that is not a chat completion ({what})", retryable=False)


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _token_count(usage: Any, name: str) -> int:
    """usage[name] when it is a whole number of tokens; 0 for anything else (a malformed count does not spoil
    the grades, it is only not counted)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if is_count(value) else 0


def chat_reply(body: bytes) -> tuple[str, int, int]:
    """(the message's text, prompt tokens, completion tokens) of a chat-completion response body, checked step by
    step; RequestFailed (not retryable) saying what is wrong for any other body. No choices, or a message
    without content (a refusal), is an empty text: no grades, so it is asked again."""
    try:
        document = load_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise unusable_reply("not UTF-8 text") from None
    except _LongNumber as error:
        raise unusable_reply(f"{error}") from None
    except RecursionError:
        raise unusable_reply("JSON nested too deeply") from None
    except ValueError:
        raise unusable_reply("not JSON") from None
    if not isinstance(document, dict):
        raise unusable_reply(f"a JSON {_json_kind(document)}, not an object")
    choices = document.get("choices")
    if not isinstance(choices, list):
        raise unusable_reply("no list of choices")
    prompt_tokens = _token_count(document.get("usage"), "prompt_tokens")
    completion_tokens = _token_count(document.get("usage"), "completion_tokens")
    if not choices:
        return "", prompt_tokens, completion_tokens
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise unusable_reply("no message in its first choice")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise unusable_reply(f"its message's content is not text but a JSON {_json_kind(content)}")
    # Lone surrogates (JSON's "\ud800") cannot be written as UTF-8: they become "?".
    return content.encode("utf-8", errors="replace").decode("utf-8"), prompt_tokens, completion_tokens


def is_text(value: Any) -> bool:
    """A str that UTF-8 can encode (JSON's "\\ud800" escapes decode to lone surrogates, which it cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_count(value: Any) -> bool:
    return type(value) is int and value >= 0
