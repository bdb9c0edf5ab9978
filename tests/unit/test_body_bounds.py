"""Request bodies are bounded before anything is built from them (api/body.py).

The value counters must agree with the decoders on every legal document (or a body could be
refused for values it does not hold), and stop at the budget on hostile ones. `parse` must
refuse a hostile body without decoding it or building models, and report a bad body with a few
errors, never one per element.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest

from api import body
from api.body import check_items, json_values, msgpack_values, parse, value_budget
from api.errors import describe_validation
from api.models import JobRequest
from api.routes.embeddings import EmbeddingsRequest
from common.errors import BodyTooLarge, InvalidInput, InvalidJson, NoItems, TooManyItems
from common.settings import LimitSettings

MiB = 1024 * 1024
LIMITS = LimitSettings()  # 1024 items, 16 MiB
SMALL = LimitSettings(max_items_per_job=4)


def values(doc: Any) -> int:
    """Reference count: every value, every key, every object and array."""
    if isinstance(doc, dict):
        return 1 + sum(1 + values(v) for v in doc.values())
    if isinstance(doc, list):
        return 1 + sum(values(v) for v in doc)
    return 1


DOCS: list[Any] = [
    None,
    True,
    0,
    -1,
    -33,
    127,
    128,
    255,
    65_535,
    2**32,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    "",
    "x" * 31,
    "x" * 32,
    "é" * 200,
    "y" * 70_000,
    b"",
    b"\x00" * 300,
    b"z" * 70_000,
    [],
    {},
    list(range(15)),
    list(range(16)),
    list(range(70_000)),
    {f"k{i}": i for i in range(15)},
    {f"k{i}": [i, {"n": None}] for i in range(16)},
    {f"k{i}": i for i in range(70_000)},
    [[[[[["deep"]]]]]],
    {
        "model": "m",
        "items": [{"text": 'a "quoted" {text} [with] brackets, commas: and \\ slashes'}],
    },
    {"items": [{"id": "\u2028\x00\t", "text": "\U0001f600" * 3}], "params": {"options": {}}},
]
EXTS: list[Any] = [
    msgpack.ExtType(5, b""),
    msgpack.ExtType(5, b"a"),
    msgpack.ExtType(5, b"ab"),
    msgpack.ExtType(5, b"abcd"),
    msgpack.ExtType(5, b"abcdefgh"),
    msgpack.ExtType(5, b"a" * 16),
    msgpack.ExtType(5, b"a" * 3),
    msgpack.ExtType(5, b"a" * 300),
    msgpack.ExtType(5, b"a" * 70_000),
    msgpack.Timestamp(1, 5),
    msgpack.Timestamp.from_datetime(datetime.datetime(2400, 1, 1, tzinfo=datetime.UTC)),
]


@pytest.mark.parametrize("doc", DOCS + EXTS + [[*EXTS, {"after": DOCS}]])
def test_msgpack_count_matches_the_document(doc: Any) -> None:
    raw = msgpack.packb(doc, use_bin_type=True)
    assert msgpack_values(raw, 10**9) == values(doc)


@pytest.mark.parametrize("doc", [d for d in DOCS if not isinstance(d, bytes)] + [DOCS[-6:]])
def test_json_count_matches_the_document(doc: Any) -> None:
    assert json_values(orjson.dumps(doc), 10**9) == values(doc)
    indented = json.dumps(doc, indent=2, ensure_ascii=True).encode()
    assert json_values(indented, 10**9) == values(doc)


@pytest.mark.parametrize(
    ("count", "raw"),
    [
        (msgpack_values, b"\xdd\xff\xff\xff\xff" + b"\x80" * MiB),  # array32 of empty maps
        (msgpack_values, b"\x81\xa5items\xdd\x01\x00\x00\x00" + b"\xc0" * MiB),
        (json_values, b"[" + b"{}," * MiB + b"{}]"),
        (json_values, b'{"items": [' + b"null," * MiB + b"null]}"),
    ],
)
def test_counting_stops_at_the_budget(count: Callable[[bytes, int], int], raw: bytes) -> None:
    assert count(raw, 1000) == 1001


def test_truncated_msgpack_is_left_to_the_decoder() -> None:
    assert msgpack_values(b"\xdc\x00\x10\xc0", 100) == 2  # says 16 elements, holds 1
    with pytest.raises(InvalidJson):
        parse(b"\xdc\x00\x10\xc0" + b"\xc0" * 2000, True, JobRequest, SMALL, "items")


def never_decode(*_: Any) -> Any:
    raise AssertionError("a hostile body was decoded")


def msgpack_items(fill: bytes) -> bytes:
    """{"model": "m", "items": [fill, fill, ...]} as msgpack, 16 MiB in all."""
    head = b"\x82\xa5model\xa1m\xa5items\xdd" + (16 * MiB).to_bytes(4, "big")
    return head + fill * (16 * MiB - len(head))


HOSTILE = [
    # (as msgpack, body): each within the default body limit, nearly all of it values.
    (True, msgpack_items(b"\xc0")),  # nil items
    (True, msgpack_items(b"\x80")),  # empty-map items
    (False, b'{"model": "m", "items": [' + b"{}," * (5 * MiB) + b"{}]}"),
    (False, b'{"model": "m", "items": [' + b"null," * (3 * MiB) + b"null]}"),
    # Few items, each with a field loraq ignores that holds a million values.
    (False, orjson.dumps({"model": "m", "items": [{"text": "t", "x": [0] * MiB}]})),
]


@pytest.mark.parametrize(("as_msgpack", "raw"), HOSTILE)
def test_hostile_body_is_refused_before_decoding(
    as_msgpack: bool, raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(raw) <= LIMITS.max_body_bytes
    monkeypatch.setattr(body, "decode", never_decode)
    with pytest.raises(BodyTooLarge, match="1024 items") as refused:
        parse(raw, as_msgpack, JobRequest, LIMITS, "items")
    assert str(value_budget(LIMITS)) in refused.value.message


def never_validate(*_: Any, **__: Any) -> Any:
    raise AssertionError("a model was built from a list over the limit")


@pytest.mark.parametrize("as_msgpack", [True, False])
def test_item_count_is_checked_before_models_are_built(
    as_msgpack: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {"model": "m", "items": [None] * 5}  # within the value budget, over 4 items
    raw = msgpack.packb(doc) if as_msgpack else orjson.dumps(doc)
    monkeypatch.setattr(JobRequest, "model_validate", never_validate)
    with pytest.raises(TooManyItems, match="5 items"):
        parse(raw, as_msgpack, JobRequest, SMALL, "items")


def test_item_list_checks() -> None:
    with pytest.raises(NoItems):
        check_items({"items": []}, "items", SMALL)
    with pytest.raises(TooManyItems):
        check_items({"input": ["a"] * 5}, "input", SMALL)
    check_items({"input": "one text"}, "input", SMALL)  # not a list: the model decides
    check_items({"items": [{}] * 4}, "items", SMALL)


def test_many_bad_items_give_one_error() -> None:
    """1024 items without text: the first is reported, no error object per item is built."""
    raw = orjson.dumps({"model": "m", "items": [{}] * LIMITS.max_items_per_job})
    with pytest.raises(InvalidInput) as refused:
        parse(raw, False, JobRequest, LIMITS, "items")
    assert refused.value.message == "items.0.text: Field required"
    error = refused.value.__cause__
    assert error is not None and error.error_count() == 1  # type: ignore[attr-defined]


def test_error_report_is_capped() -> None:
    errors: list[dict[str, object]] = [
        {"loc": ("body", "k" * 10_000, i), "msg": "bad"} for i in range(1000)
    ]
    message = describe_validation(errors)
    assert message.endswith("(+997 more)")
    assert len(message) < 1000


@pytest.mark.parametrize(
    ("as_msgpack", "raw"),
    [(True, b"\x91" * 5000 + b"\xc0"), (False, b"[" * 5000 + b"]" * 5000)],
)
def test_deep_nesting_is_invalid(as_msgpack: bool, raw: bytes) -> None:
    with pytest.raises(InvalidJson, match=r"nested too deeply|depth"):
        parse(raw, as_msgpack, JobRequest, LIMITS, "items")


@pytest.mark.parametrize(
    "body_",
    [
        {"model": "m", "items": [{"text": "t"}], "params": {"options": {"truncate": 0}}},
        {"model": "m", "items": [{"text": 5}]},
        {"model": 1, "items": [{"text": "t"}]},
    ],
)
def test_types_are_strict(body_: dict[str, Any]) -> None:
    """The document says boolean and string: `0` and `5` are refused, not coerced."""
    with pytest.raises(InvalidInput):
        parse(orjson.dumps(body_), False, JobRequest, LIMITS, "items")


@pytest.mark.parametrize("as_msgpack", [True, False])
def test_full_size_legitimate_body_is_parsed(as_msgpack: bool) -> None:
    """1024 items of code and prose (brackets, quotes, commas) filling most of 16 MiB."""
    text = 'def f(x): return {"a": [x, {"b": (1, 2)}]}  # "quoted", [listed] ' * 220
    doc = {
        "model": "m",
        "items": [{"id": f"doc-{i}", "text": text, "meta": {"page": i}} for i in range(1024)],
        "params": {"options": {"lora_id": "org/name", "normalize": True}},
    }
    raw = msgpack.packb(doc) if as_msgpack else orjson.dumps(doc)
    assert 12 * MiB < len(raw) <= LIMITS.max_body_bytes
    parsed = parse(raw, as_msgpack, JobRequest, LIMITS, "items")
    assert len(parsed.items) == 1024 and parsed.items[5].text == text


def test_embeddings_input_list_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EmbeddingsRequest, "model_validate", never_validate)
    raw = orjson.dumps({"model": "m", "input": ["t"] * 5})
    with pytest.raises(TooManyItems):
        parse(raw, False, EmbeddingsRequest, SMALL, "input")
