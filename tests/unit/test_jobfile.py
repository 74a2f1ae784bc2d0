import io
import json

import pytest

from batchroute.errors import InputError
from batchroute.jobfile import JobItem, iter_job_lines, parse_line

MODELS = ["sim-gpt-4", "sim-llama-3-8b"]


def test_plain_line():
    item = parse_line(json.dumps({"id": "a", "prompt": "Hello there", "latency": "batch"}), 3, MODELS)
    assert (item.line, item.custom_id, item.prompt, item.latency_class, item.model) == (3, "a", "Hello there",
                                                                                      "batch", None)
    assert item.messages == [{"role": "user", "content": "Hello there"}]
    assert item.prompt_tokens_est == 3 + 3 + 3  # ceil(11/4)=3 + per-message 3 + priming 3


def test_openai_batch_line_pins_known_model_and_joins_text():
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "sim-gpt-4", "max_tokens": 50, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]}}
    item = parse_line(json.dumps(line), 1, MODELS)
    assert item.model == "sim-gpt-4" and item.max_tokens == 50
    assert item.prompt == "Be brief.\n\nWhat is 2+2?"


@pytest.mark.parametrize("obj,field,fragment", [
    ({"id": "x"}, "prompt", "missing"),
    ({"id": "x", "prompt": "  "}, "prompt", "missing or empty"),
    ({"id": "x", "prompt": 5}, "prompt", "must be a string, got a number"),
    ({"id": "x", "prompt": ["a"]}, "prompt", "must be a string, got an array"),
    ({"custom_id": True, "body": {"messages": [{"role": "user", "content": "x"}]}}, "custom_id",
     "must be a string, got a boolean"),
    ({"id": "x", "prompt": "hi", "latency": "urgent"}, "latency", "unknown latency class 'urgent'"),
    ({"id": "x", "prompt": "hi", "model": "gpt-9"}, "model", "unknown model 'gpt-9'"),
    ({"id": "x", "prompt": "hi", "max_tokens": -5}, "max_tokens", "positive integer"),
    ({"custom_id": "c", "body": {"messages": []}}, "body.messages", "non-empty"),
    ({"custom_id": "c", "url": "/v1/embeddings", "body": {}}, "url", "only /v1/chat/completions"),
    ({"custom_id": "c", "body": {"messages": [{"role": "wizard", "content": "x"}]}}, "body.messages[0].role",
     "unknown role"),
])
def test_bad_lines_name_line_and_field(obj, field, fragment):
    with pytest.raises(InputError) as ei:
        parse_line(json.dumps(obj), 7, MODELS)
    assert ei.value.line == 7 and ei.value.field == field
    assert fragment in str(ei.value) and "line 7" in str(ei.value)


def test_stream_keeps_going_after_bad_lines():
    text = "\n".join([
        json.dumps({"id": "1", "prompt": "one"}),
        "{not json",
        "",
        json.dumps({"id": "1", "prompt": "dup"}),
        json.dumps({"id": "3", "prompt": "three"}),
    ])
    out = list(iter_job_lines(io.StringIO(text), MODELS, source="f.jsonl"))
    assert [type(o).__name__ for o in out] == ["JobItem", "InputError", "InputError", "JobItem"]
    assert out[1].line == 2 and "not valid JSON" in str(out[1]) and str(out[1]).startswith("f.jsonl, line 2")
    assert out[2].line == 4 and "duplicate id '1'" in str(out[2])
    assert isinstance(out[3], JobItem) and out[3].line == 5


def test_auto_and_ignore_model():
    assert parse_line(json.dumps({"prompt": "x", "model": "auto"}), 1, MODELS).model is None
    assert parse_line(json.dumps({"prompt": "x", "model": "gpt-9"}), 1, MODELS, ignore_model=True).model is None
    assert parse_line(json.dumps({"prompt": "x"}), 9, MODELS).custom_id == "line-9"


def test_a_line_that_is_not_utf8_fails_alone(tmp_path) -> None:
    from batchroute.jobfile import OPEN_ERRORS, InputError, JobItem, iter_job_lines

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "caf\xe9 latin-1"}\n'
                     b'{"id": "c", "prompt": "also fine"}\n')
    with path.open(encoding="utf-8", errors=OPEN_ERRORS) as fh:
        items = list(iter_job_lines(fh))
    assert [type(i) for i in items] == [JobItem, InputError, JobItem]
    assert items[1].line == 2 and "not valid UTF-8 at column" in str(items[1])
