"""Wire contracts (common/schemas.py) and Redis key names (common/keys.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from api.models import EncodeRequest, JobRequest
from common import keys
from common.errors import InvalidLoraId
from common.schemas import EncodeMessage, JobStatus, validate_lora_id

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "lora_id",
    [
        "org/name",
        "name",
        "org/name.v2_x-1",
        "A1/b",
        "9lives",
        "a" * 96,
        "o" * 96 + "/" + "n" * 96,
    ],
)
def test_valid_lora_ids(lora_id: str) -> None:
    assert validate_lora_id(lora_id) == lora_id


@pytest.mark.parametrize(
    "lora_id",
    [
        "../../etc",
        "..",
        ".",
        "/abs",
        "/abs/path",
        "a/../b",
        "a/..",
        "a//b",
        "a/b/c",
        "",
        "/",
        "org/",
        ".hidden",
        "org/.hidden",
        "-dash",
        "_under",
        "a\\b",
        "..\\..\\windows",
        "a b",
        "name\n",
        "name\x00",
        "naïve",
        "a..b",
        "a" * 97,
        "org/" + "n" * 97,
    ],
)
def test_invalid_lora_ids(lora_id: str) -> None:
    with pytest.raises(InvalidLoraId) as info:
        validate_lora_id(lora_id)
    assert info.value.code == "INVALID_LORA_ID"
    assert info.value.http_status == 422


def test_invalid_lora_id_message_is_bounded() -> None:
    with pytest.raises(InvalidLoraId) as info:
        validate_lora_id("x/" * 10_000)
    assert len(info.value.message) < 500


SIE_BODY: dict[str, Any] = {
    "items": [
        {"id": "doc-1", "text": "hello", "images": ["ignored"], "metadata": {"k": 1}},
        {"text": "world"},
    ],
    "params": {
        "options": {"lora_id": "org/name", "normalize": True, "is_query": True, "x": [1]},
        "output_types": ["dense"],
        "output_dtype": "float32",
    },
}


def test_encode_request_accepts_sie_body() -> None:
    req = EncodeRequest.model_validate(SIE_BODY)
    assert [(i.id, i.text) for i in req.items] == [("doc-1", "hello"), (None, "world")]
    assert not hasattr(req.items[0], "images")
    options = req.params.options
    assert (options.lora_id, options.normalize, options.truncate) == ("org/name", True, True)
    assert "is_query" not in options.model_dump()
    assert req.params.output_types == ["dense"]
    assert req.params.output_dtype == "float32"


def test_encode_request_defaults() -> None:
    req = EncodeRequest.model_validate({"items": [{"text": "t"}]})
    assert req.params.options.lora_id is None
    assert req.params.options.normalize is None
    assert req.params.options.truncate is True
    assert req.params.output_types is None


def test_job_request_accepts_sie_body_with_model() -> None:
    req = JobRequest.model_validate({**SIE_BODY, "model": "m/1"})
    assert req.model == "m/1"
    assert len(req.items) == 2
    with pytest.raises(ValidationError):
        JobRequest.model_validate(SIE_BODY)  # the model is required on the job route


@pytest.mark.parametrize("model", [EncodeRequest, JobRequest])
def test_unknown_top_level_key_refused(model: type[EncodeRequest]) -> None:
    body = {**SIE_BODY, "model": "m/1", "surprise": 1}
    if model is EncodeRequest:
        body.pop("model")
    with pytest.raises(ValidationError, match="surprise"):
        model.model_validate(body)


def test_unknown_params_key_refused() -> None:
    body = {"items": [{"text": "t"}], "params": {"options": {}, "bogus": 1}}
    with pytest.raises(ValidationError, match="bogus"):
        EncodeRequest.model_validate(body)


@pytest.mark.parametrize(
    "params",
    [
        {"output_types": ["sparse"]},
        {"output_types": ["dense", "multivector"]},
        {"output_types": "dense"},
        {"output_dtype": "float16"},
        {"output_dtype": "int8"},
    ],
)
def test_unsupported_outputs_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EncodeRequest.model_validate({"items": [{"text": "t"}], "params": params})


@pytest.mark.parametrize(
    "item",
    [{"id": "x"}, {"text": 5}, {"text": "t", "id": "i" * 257}],
)
def test_bad_items_refused(item: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EncodeRequest.model_validate({"items": [item]})


def test_encode_message_is_strict() -> None:
    message = {
        "job_id": "job_1",
        "model": "m",
        "lora_id": None,
        "texts": ["a"],
        "normalize": None,
        "truncate": True,
        "enqueued_at": 1.0,
    }
    assert EncodeMessage.model_validate(message).v == 1
    with pytest.raises(ValidationError):
        EncodeMessage.model_validate({**message, "extra": 1})
    with pytest.raises(ValidationError):
        EncodeMessage.model_validate({**message, "v": 2})


@pytest.mark.parametrize("lora_id", ["../etc", "org/../../etc", "/abs", "a\\b"])
def test_lora_ids_are_checked_where_they_enter(lora_id: str) -> None:
    """Adapter sources build paths, repo ids and keys from a lora_id unchecked: a request body
    and a queue message are where a bad one must stop, with its own error code."""
    message = {
        "job_id": "job_1", "model": "m", "lora_id": lora_id, "texts": ["a"], "normalize": None,
        "truncate": True, "enqueued_at": 1.0,
    }  # fmt: skip
    with pytest.raises(InvalidLoraId):
        EncodeMessage.model_validate(message)
    with pytest.raises(InvalidLoraId):
        EncodeRequest.model_validate(
            {"items": [{"text": "a"}], "params": {"options": {"lora_id": lora_id}}}
        )


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }


# -- keys ------------------------------------------------------------------------------------


def _hash_tag(key: str) -> str:
    """Redis Cluster's rule: the part between the first `{` and the next `}`, if not empty."""
    start = key.find("{")
    end = key.find("}", start + 1)
    assert start >= 0 and end > start + 1, f"{key!r} has no hash tag"
    return key[start + 1 : end]


@pytest.mark.parametrize("job_id", ["job_abc", "job_Zx-_09", "1"])
def test_job_keys_share_a_hash_tag(job_id: str) -> None:
    job_key, result_key = keys.job(job_id), keys.job_result(job_id)
    assert job_key != result_key
    assert _hash_tag(job_key) == _hash_tag(result_key) == job_id
    assert job_key.startswith(keys.PREFIX) and result_key.startswith(keys.PREFIX)


def test_key_names_are_stable() -> None:
    assert keys.job("j") == "loraq:job:{j}"
    assert keys.job_result("j") == "loraq:job:{j}:result"
    assert keys.worker("w1") == "loraq:worker:w1"
    assert keys.JOB_DONE_CHANNEL == "loraq:events:job-done"
    assert keys.queue_list("jobs.x") == "loraq:celery:jobs.x"


@pytest.mark.parametrize(
    ("model_id", "queue"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", "jobs.sentence-transformers-all-minilm-l6-v2"),
        ("BAAI/bge-m3", "jobs.baai-bge-m3"),
        ("/models/My Model/", "jobs.models-my-model"),
    ],
)
def test_model_queue_is_a_stable_slug(model_id: str, queue: str) -> None:
    assert keys.model_queue(model_id) == queue
    assert keys.model_queue(model_id) == keys.model_queue(model_id)
    assert re.fullmatch(r"jobs\.[a-z0-9]+(-[a-z0-9]+)*", keys.model_queue(model_id))
