"""What every block of a pipeline file shares: the model base (unknown keys refused) and topic names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from ..errors import InvalidTopicError


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- topic names -------------------------------------------------------------

MAX_TOPIC_NAME = 249
_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a legal topic name (Kafka's rules), or None."""
    if not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"a topic name cannot be {name!r}"
    if len(name) > MAX_TOPIC_NAME:
        return f"a topic name has at most {MAX_TOPIC_NAME} characters, this one has {len(name)}"
    bad = sorted({c for c in name if not _TOPIC_CHARS.fullmatch(c)})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"topic name {name!r} may only use ASCII letters, digits, '.', '_' and '-' (not {shown})"
    return None


def check_topic_name(name: str) -> str:
    """Return ``name`` or raise :class:`InvalidTopicError` saying why it is illegal."""
    problem = topic_name_problem(name)
    if problem:
        raise InvalidTopicError(problem)
    return name


def _topic_name(value: str) -> str:
    problem = topic_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]
