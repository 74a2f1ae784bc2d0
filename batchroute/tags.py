"""Job tags (``team=legal``): the one place their syntax is defined and checked.

A key is 1-64 letters, digits, ``_ . -``; a value is up to 200 characters (empty allowed). Tags
group costs (``--by tag:team``) and carry budgets (``budget set --tag team=legal``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from batchroute.errors import InputError

TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TAG_RE = re.compile(r"^([A-Za-z0-9_.-]{1,64})=(.{0,200})$")
MAX_VALUE_CHARS = 200
KEY_RULE = "KEY of 1-64 letters, digits, _ . -"


def parse_tag(text: str) -> tuple[str, str]:
    """``"team=legal"`` -> ``("team", "legal")``; raises InputError saying what is allowed."""
    m = TAG_RE.match(text)
    if not m:
        raise InputError(f"bad tag {text!r}: expected KEY=VALUE, {KEY_RULE}", field="tag")
    return m.group(1), m.group(2)


def parse_tags(texts: Iterable[str]) -> dict[str, str]:
    """Many ``KEY=VALUE`` strings to a dict (a repeated key keeps its last value)."""
    return dict(parse_tag(t) for t in texts)


def check_tags(tags: Mapping[str, str]) -> None:
    """Raise InputError naming the first bad key or value of a tag dict (the Python API's input)."""
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY_RE.match(key):
            raise InputError(f"bad tag key {key!r}: {KEY_RULE}", field="tag")
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS or "\n" in value:
            raise InputError(f"bad value for tag {key!r}: a string of at most {MAX_VALUE_CHARS} characters, "
                             "one line", field="tag")
