"""The gateway's OpenAPI document: valid, self-contained, and saying what the gateway enforces.

Clients are generated from it, so every `$ref` must resolve inside it, bodies must be required
and typed, the bearer key and every error answer documented, and the settings' limits written
in. (The running gateway is held to it by tests/e2e/test_fuzz_api.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from api.idempotency import MAX_KEY_LENGTH
from api.main import create_app
from common.settings import DEFAULT_MODEL_ID, Settings

BODY_ROUTES = {
    ("/v1/jobs", "post"): "JobRequest",
    ("/v1/encode/{model}", "post"): "EncodeRequest",
    ("/v1/embeddings", "post"): "EmbeddingsRequest",
}
LIMITS = {"max_items_per_job": 64, "max_text_chars": 5000}


def document(**settings: Any) -> dict[str, Any]:
    doc: dict[str, Any] = create_app(Settings(limits=LIMITS, **settings)).openapi()
    return doc


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    found = set(refs(doc))
    assert found, "no references at all"
    for ref in found:
        prefix, _, name = ref.rpartition("/")
        assert prefix == "#/components/schemas", ref
        assert name in schemas, ref
    assert "$defs" not in str(doc)


@pytest.mark.parametrize(("route", "model"), BODY_ROUTES.items())
def test_parsed_bodies_are_required_json_or_msgpack(
    doc: dict[str, Any], route: tuple[str, str], model: str
) -> None:
    path, method = route
    body = doc["paths"][path][method]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/msgpack"}
    for content in body["content"].values():
        assert content["schema"] == {"$ref": f"#/components/schemas/{model}"}


def test_limits_are_the_settings(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for name in ("JobRequest", "EncodeRequest"):
        items = schemas[name]["properties"]["items"]
        assert (items["minItems"], items["maxItems"]) == (1, 64)
    assert schemas["Item"]["properties"]["text"]["maxLength"] == 5000
    text, array = schemas["EmbeddingsRequest"]["properties"]["input"]["anyOf"]
    assert (text["minLength"], text["maxLength"]) == (1, 5000)
    assert (array["minItems"], array["maxItems"]) == (1, 64)
    assert schemas["JobRequest"]["properties"]["model"]["enum"] == [DEFAULT_MODEL_ID]
    (header,) = doc["paths"]["/v1/jobs"]["post"]["parameters"]
    assert header["name"] == "idempotency-key" and header["in"] == "header"
    key = next(s for s in header["schema"]["anyOf"] if s["type"] == "string")
    assert (key["minLength"], key["maxLength"]) == (1, MAX_KEY_LENGTH)


def test_bearer_keys_are_documented_on_every_v1_operation(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, op in operations(doc):
        v1 = path.startswith("/v1/")
        assert op.get("security") == ([{"apiKey": []}] if v1 else None), (method, path)
        assert ("401" in op["responses"]) is v1, (method, path)


def test_without_keys_no_security_is_claimed() -> None:
    doc = document(auth={"mode": "disabled"})
    assert "securitySchemes" not in doc["components"]
    for _, _, op in operations(doc):
        assert "security" not in op and "401" not in op["responses"]


ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


def test_error_answers_are_documented_with_the_error_body(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        responses = op["responses"]
        expected = {"500"} | ({"401", "503"} if path.startswith("/v1/") else set())
        if (path, method) in BODY_ROUTES:
            expected |= {"400", "403", "404", "413", "415", "422", "429"}
        if path in ("/v1/encode/{model}", "/v1/embeddings"):
            expected.add("504")
        assert expected <= set(responses), (method, path)
        for status in expected:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == ERROR_BODY, (method, path, status)
        for status in {"429", "503"} & expected:
            assert "Retry-After" in responses[status]["headers"], (method, path, status)


def test_readiness_documents_its_503(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    for status in ("200", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Readiness"}


def component_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for one component schema, with the document's other components for refs."""
    registry: Registry[Any] = Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry)


def test_bodies_the_gateway_takes_match_the_document(doc: dict[str, Any]) -> None:
    job = {
        "model": DEFAULT_MODEL_ID,
        "items": [{"id": "a", "text": "hello", "images": []}],
        "params": {"options": {"lora_id": "org/name", "is_query": True}},
        "webhook": {"url": "https://example.com/hook", "events": ["succeeded"]},
    }
    component_validator(doc, "JobRequest").validate(job)
    component_validator(doc, "EmbeddingsRequest").validate({"model": "m:org/a", "input": ["x"]})
    too_many = {**job, "items": [{"text": "t"}] * 65}
    assert not component_validator(doc, "JobRequest").is_valid(too_many)
    assert not component_validator(doc, "JobRequest").is_valid({**job, "items": []})
