"""Reading job files: plain JSONL prompts or the OpenAI Batch input format, streamed line by line.

Accepted lines::

    {"id": "a1", "prompt": "Summarize ...", "latency": "batch", "model": "auto", "max_tokens": 300}
    {"custom_id": "a1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "auto", "messages": [{"role": "user", "content": "..."}], "max_tokens": 300}}

A bad line never stops the file: :func:`iter_job_lines` yields an :class:`~batchroute.errors.InputError`
(line number, field, reason) in its place and goes on. ``model`` may name a registry model (the
request is pinned to it) or be ``auto`` / absent (batchroute routes it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from batchroute.errors import InputError
from batchroute.providers.base import estimate_prompt_tokens
from batchroute.taxonomy import LATENCY_CLASSES

AUTO_MODELS = frozenset({"auto", "batchroute", "batchroute/auto", ""})
BATCH_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
MAX_CUSTOM_ID = 200


@dataclass
class JobItem:
    """One valid line of a job file."""

    line: int
    custom_id: str
    prompt: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    latency_class: str | None = None
    model: str | None = None
    prompt_tokens_est: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of a chat's messages (string contents and text parts), joined by blank lines."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n\n".join(p for p in parts if p)


def _check_messages(raw: Any, line: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InputError("must be a non-empty list of {role, content}", line=line, field="body.messages")
    for i, m in enumerate(raw):
        where = f"body.messages[{i}]"
        if not isinstance(m, dict):
            raise InputError("must be an object with role and content", line=line, field=where)
        if m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise InputError(f"unknown role {m.get('role')!r}", line=line, field=f"{where}.role")
        if not isinstance(m.get("content"), (str, list)):
            raise InputError("must be a string or a list of parts", line=line, field=f"{where}.content")
    return raw


def _positive_int(value: Any, line: int, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"must be a positive integer, got {value!r}", line=line, field=name)
    return value


def _not_text(value: object) -> str:
    """Why ``value`` is not a usable string field (missing, empty, or the JSON type it has)."""
    if value is None or isinstance(value, str):
        return "missing or empty"
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return f"must be a string, got {kind.get(type(value), type(value).__name__)}"


def parse_line(text: str, line: int, known_models: Iterable[str] = (),
               ignore_model: bool = False) -> JobItem:
    """Parse one JSONL line into a JobItem; raises InputError naming the line and field."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at column {exc.colno}", line=line) from exc
    if not isinstance(obj, dict):
        raise InputError("must be a JSON object", line=line)

    latency = obj.get("latency", obj.get("latency_class"))
    if "body" in obj or "custom_id" in obj:
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise InputError(_not_text(custom_id), line=line, field="custom_id")
        if obj.get("method", "POST") != "POST":
            raise InputError(f"only POST is supported, got {obj.get('method')!r}", line=line, field="method")
        if obj.get("url", "/v1/chat/completions") not in BATCH_URLS:
            raise InputError(f"only /v1/chat/completions is supported, got {obj.get('url')!r}",
                             line=line, field="url")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise InputError("missing or not an object", line=line, field="body")
        messages = _check_messages(body.get("messages"), line)
        model = body.get("model")
        max_tokens = _positive_int(body.get("max_completion_tokens", body.get("max_tokens")), line,
                                   "body.max_tokens")
        metadata = body.get("metadata")
        meta: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
        latency = latency if latency is not None else meta.get("latency")
    else:
        custom_id = obj.get("id")
        if custom_id is None:
            custom_id = f"line-{line}"
        elif not isinstance(custom_id, (str, int)) or isinstance(custom_id, bool):
            raise InputError("must be a string or an integer", line=line, field="id")
        custom_id = str(custom_id)
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(_not_text(prompt), line=line, field="prompt")
        messages = [{"role": "user", "content": prompt}]
        model = obj.get("model")
        max_tokens = _positive_int(obj.get("max_tokens"), line, "max_tokens")

    if len(custom_id) > MAX_CUSTOM_ID:
        raise InputError(f"longer than {MAX_CUSTOM_ID} characters", line=line, field="custom_id")
    if latency is not None and latency not in LATENCY_CLASSES:
        raise InputError(f"unknown latency class {latency!r}; allowed: {', '.join(LATENCY_CLASSES)}",
                         line=line, field="latency")
    prompt_text = message_text(messages)
    if not prompt_text.strip():
        raise InputError("the messages contain no text", line=line, field="body.messages")
    if model is not None and not isinstance(model, str):
        raise InputError("must be a string", line=line, field="model")
    if ignore_model or (model or "").lower() in AUTO_MODELS:
        model = None
    elif model not in set(known_models):
        raise InputError(f"unknown model {model!r}; use one of {sorted(known_models)} or 'auto'",
                         line=line, field="model")
    return JobItem(line=line, custom_id=custom_id, prompt=prompt_text, messages=messages,
                   max_tokens=max_tokens, latency_class=latency, model=model,
                   prompt_tokens_est=estimate_prompt_tokens(messages))


# Job files are read with errors="surrogateescape" (see OPEN_ERRORS): a line with bytes that are not
# UTF-8 keeps them as lone surrogates, which this turns into that line's error instead of failing
# the whole file.
OPEN_ERRORS = "surrogateescape"


def _check_utf8(text: str, line: int) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"not valid UTF-8 at column {exc.start + 1}", line=line) from exc


def iter_job_lines(stream: IO[str], known_models: Iterable[str] = (), ignore_model: bool = False,
                   source: str | None = None) -> Iterator[JobItem | InputError]:
    """Yield a JobItem or an InputError per non-blank line; never loads the whole file."""
    names = frozenset(known_models)
    seen: set[str] = set()
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            _check_utf8(text, number)
            item = parse_line(text, number, names, ignore_model)
        except InputError as err:
            err.source = source
            yield err
            continue
        if item.custom_id in seen:
            yield InputError(f"duplicate id {item.custom_id!r}", line=number, field="custom_id",
                             source=source)
            continue
        seen.add(item.custom_id)
        yield item
