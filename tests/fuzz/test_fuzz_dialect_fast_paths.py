"""The dialects' hand-written fast paths against the general code they stand in for, over generated inputs (pure,
no server): each must give what the general path gives, or step aside to it.

- Launch's request body (`models.task_invocation`): the invocation of `parse_task_request` + `to_invocation`, with
  the args' JSON text as sent (the same JSON value), or the same InvalidRequest message.
- Launch's successful sync body (`render.sync_success_body`): byte for byte pydantic's `dump` of the response model.
- `edge.exchange.Head.query`: what `urllib.parse.parse_qsl` finds, with or without escapes.

Bounded and derandomized, like the other fuzz modules.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import Invocation
from bundleserve.dialects.launch import render
from bundleserve.dialects.launch.models import (
    LegacyTaskRequest,
    V1TaskRequest,
    parse_task_request,
    task_invocation,
    to_invocation,
)
from bundleserve.edge.exchange import Head

BOUNDED = settings(max_examples=300, derandomize=True, deadline=None)

#: Text without lone surrogates (neither a client's UTF-8 body nor a model's answer can hold one).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
MODELS = st.sampled_from([LegacyTaskRequest, V1TaskRequest])


def _general(body: bytes, model: type[LegacyTaskRequest] | type[V1TaskRequest]) -> Invocation | str:
    try:
        return to_invocation(parse_task_request(body, model))
    except InvalidRequest as error:
        return error.message


def _fast(body: bytes, model: type[LegacyTaskRequest] | type[V1TaskRequest]) -> Invocation | str:
    try:
        return task_invocation(body, model)
    except InvalidRequest as error:
        return error.message


def _agree(body: bytes, model: type[LegacyTaskRequest] | type[V1TaskRequest]) -> None:
    general, fast = _general(body, model), _fast(body, model)
    if isinstance(general, str) or isinstance(fast, str):
        assert fast == general, body
        return
    if fast.body != general.body:  # the same value (NaN aside: the same text); the fast path keeps its text
        assert json.loads(fast.body) == json.loads(general.body), body
    assert (fast.url, fast.return_pickled, fast.timeout_seconds, fast.content_type, fast.raw) == (
        general.url,
        general.return_pickled,
        general.timeout_seconds,
        general.content_type,
        general.raw,
    ), body


@BOUNDED
@given(args=JSON_VALUES, model=MODELS, spaces=st.tuples(SPACE, SPACE, SPACE, SPACE, SPACE))
def test_the_common_launch_body_gives_the_general_paths_invocation(
    args: Any, model: type[LegacyTaskRequest] | type[V1TaskRequest], spaces: tuple[str, ...]
) -> None:
    a, b, c, d, e = spaces
    text = json.dumps(args, ensure_ascii=False, indent=None if a == "" else 1)
    _agree(f'{a}{{{b}"args"{c}:{d}{text}{e}}}'.encode(), model)


@BOUNDED
@given(
    document=st.dictionaries(
        st.sampled_from(["args", "url", "return_pickled", "timeout_seconds", "cloudpickle", "callback_url", "x"]),
        JSON_VALUES,
        max_size=3,
    ),
    model=MODELS,
)
def test_any_other_launch_body_gives_the_general_paths_invocation_or_error(
    document: dict[str, Any], model: type[LegacyTaskRequest] | type[V1TaskRequest]
) -> None:
    _agree(json.dumps(document).encode(), model)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"  ",
        b'{"args": null}',
        b'{"args": 1, "args": 2}',
        b'{"args": {"a": 1}} x',
        b'{"args": {"a": 1}',
        b'{"args": [1, 2]}',
        b'{"args": "text"}',
        b'{"args": NaN}',
        b'{"args": {"a": 1}, "return_pickled": true}',
        b'{"args": {"a": 1}, "cloudpickle": "x"}',
        b'{"url": "https://example.com/x"}',
        '{"args": {"é": "ü"}}'.encode(),
        '{"args": {"é": 1}}'.encode("utf-16"),
        b"[" * 5000 + b"]" * 5000,
        b'{"args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
@pytest.mark.parametrize("model", [LegacyTaskRequest, V1TaskRequest])
def test_edge_case_launch_bodies_agree(body: bytes, model: type[LegacyTaskRequest] | type[V1TaskRequest]) -> None:
    _agree(body, model)


def test_the_fast_launch_path_keeps_the_args_text_and_the_models_default() -> None:
    body = b'{"args": {"x": 1,  "t": "\xc3\xa9"}}'
    assert task_invocation(body, V1TaskRequest) == Invocation(body=b'{"x": 1,  "t": "\xc3\xa9"}')
    assert task_invocation(body, LegacyTaskRequest).return_pickled is True


@BOUNDED
@given(result=TEXT | st.text(max_size=40).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_the_sync_success_body_is_pydantics_byte_for_byte(result: str) -> None:
    assert render.sync_success_body(result, legacy=True) == render.dump(render.build_legacy_sync(result=result))
    assert render.sync_success_body(result, legacy=False) == render.dump(render.build_v1_sync(result=result))


@pytest.mark.parametrize("result", ["", '{"x": 1}', '"\\u0000"', "\x00\x1f\x7f\u2028\u00e9\U0001f600", 'a"b\\c\n\t'])
def test_the_sync_success_body_matches_for_control_and_unicode_characters(result: str) -> None:
    for legacy, model in (
        (True, render.build_legacy_sync(result=result)),
        (False, render.build_v1_sync(result=result)),
    ):
        assert render.sync_success_body(result, legacy=legacy) == render.dump(model)


QUERY_PARTS = st.text(st.sampled_from("ab=&%+2F0x;é "), max_size=20)


@BOUNDED
@given(raw=QUERY_PARTS, name=st.sampled_from(["a", "b", "ab", "", "a b", "a+b"]))
def test_head_query_finds_what_parse_qsl_finds(raw: str, name: str) -> None:
    expected = next((value for key, value in parse_qsl(raw, keep_blank_values=True) if key == name), None)
    assert Head("POST", "/v1/sync-tasks", raw, {}).query(name) == expected  # type: ignore[arg-type]
