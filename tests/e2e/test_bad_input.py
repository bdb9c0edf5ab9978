"""Every bad input gets its own status and error code, never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgpack
import pytest

from loraq.testing import save_random_adapter
from tests.constants import MODEL
from tests.e2e.helpers import submit, wait_job

OK_ITEMS = [{"text": "hello"}]


def job_body(**overrides: object) -> dict[str, object]:
    return {"model": MODEL, "items": OK_ITEMS, **overrides}


def options(**opts: object) -> dict[str, object]:
    return {"params": {"options": opts}}


CASES = [
    ("malformed json", b'{"model": ', "application/json", 400, "INVALID_JSON"),
    ("not an object", b"[1, 2]", "application/json", 422, "INVALID_INPUT"),
    ("malformed msgpack", b"\xc1\xc1", "application/msgpack", 400, "INVALID_JSON"),
    ("wrong content type", b"model=x", "application/x-www-form-urlencoded", 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("missing items", json.dumps({"model": MODEL}), "application/json", 422, "INVALID_INPUT"),
    ("item without text", json.dumps(job_body(items=[{"id": "a"}])), "application/json", 422,
     "INVALID_INPUT"),
    ("unknown top-level key", json.dumps(job_body(colour="red")), "application/json", 422,
     "INVALID_INPUT"),
    ("empty items", json.dumps(job_body(items=[])), "application/json", 422, "NO_ITEMS"),
    ("too many items", json.dumps(job_body(items=[{"text": "x"}] * 65)), "application/json", 422,
     "TOO_MANY_ITEMS"),
    ("text too long, no truncation",
     json.dumps(job_body(items=[{"text": "word " * 400}], **options(truncate=False))),
     "application/json", 422, "INPUT_TOO_LONG"),
    ("text over the character limit", json.dumps(job_body(items=[{"text": "x" * 100_001}])),
     "application/json", 422, "INPUT_TOO_LONG"),
    ("body too large", json.dumps(job_body(items=[{"text": "y" * 1000}] * 300)),
     "application/json", 413, "BODY_TOO_LARGE"),
    ("unknown model", json.dumps(job_body(model="nope/unknown")), "application/json", 404,
     "MODEL_NOT_FOUND"),
    ("unknown adapter", json.dumps(job_body(**options(lora_id="org/missing"))),
     "application/json", 404, "ADAPTER_NOT_FOUND"),
    ("path traversal lora_id", json.dumps(job_body(**options(lora_id="../../etc"))),
     "application/json", 422, "INVALID_LORA_ID"),
    ("absolute lora_id", json.dumps(job_body(**options(lora_id="/etc/passwd"))),
     "application/json", 422, "INVALID_LORA_ID"),
    ("unsupported output type",
     json.dumps(job_body(params={"output_types": ["sparse"]})), "application/json", 422,
     "INVALID_INPUT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_job_request(
    client: httpx.Client, body: str | bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert response.headers["x-sie-error-code"] == code


def test_text_over_token_limit_is_truncated_by_default(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=job_body(items=[{"text": "word " * 400}]))
    assert response.status_code == 202
    assert wait_job(client, response.json()["id"])["status"] == "succeeded"


def test_msgpack_job_request(client: httpx.Client) -> None:
    body = msgpack.packb(job_body(), use_bin_type=True)
    response = client.post(
        "/v1/jobs", content=body, headers={"content-type": "application/msgpack"}
    )
    assert response.status_code == 202
    assert wait_job(client, response.json()["id"])["status"] == "succeeded"


def test_unknown_route_and_method(client: httpx.Client) -> None:
    response = client.get("/v1/nothing-here")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "NOT_FOUND")
    response = client.put("/v1/jobs", json={})
    assert (response.status_code, response.json()["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_adapter_refused_by_worker_fails_the_job(client: httpx.Client, adapter_dir: Path) -> None:
    """An adapter that exists (so submit accepts it) but is invalid fails its job with the
    validation code; the worker keeps serving."""
    bad = adapter_dir / "org" / "pickled"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (bad / "adapter_model.bin").write_bytes(b"not really a pickle")
    response = client.post("/v1/jobs", json=job_body(**options(lora_id="org/pickled")))
    assert response.status_code == 202
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "ADAPTER_UNSAFE_FORMAT"
    response = client.post("/v1/jobs", json=job_body())
    assert wait_job(client, response.json()["id"])["status"] == "succeeded"


def _adapter_like(
    adapter_dir: Path, lora_id: str, config: str | None = None, **changes: object
) -> str:
    """A copy of org/qv-r4 (real PEFT weights) with its config replaced or changed."""
    source, target = adapter_dir / "org" / "qv-r4", adapter_dir / lora_id
    target.mkdir(parents=True, exist_ok=True)
    weights = "adapter_model.safetensors"
    (target / weights).write_bytes((source / weights).read_bytes())
    if config is None:
        config = json.dumps({**json.loads((source / "adapter_config.json").read_text()), **changes})
    (target / "adapter_config.json").write_text(config)
    return lora_id


MALFORMED_CONFIGS = [
    ("config a list", "[1, 2]", {}, "ADAPTER_CONFIG_INVALID"),
    ("lora_alpha a string", None, {"lora_alpha": "8"}, "ADAPTER_CONFIG_INVALID"),
    ("r of 0", None, {"r": 0}, "ADAPTER_CONFIG_INVALID"),
    ("rank_pattern a list", None, {"rank_pattern": ["query"]}, "ADAPTER_CONFIG_INVALID"),
    ("target_modules an int", None, {"target_modules": 5}, "ADAPTER_CONFIG_INVALID"),
    ("invalid regex", None, {"rank_pattern": {"(": 4}}, "ADAPTER_UNSUPPORTED"),
    ("NaN alpha", None, {"lora_alpha": float("nan")}, "ADAPTER_NON_FINITE"),
]


@pytest.mark.parametrize(
    ("config", "changes", "code"),
    [case[1:] for case in MALFORMED_CONFIGS],
    ids=[case[0] for case in MALFORMED_CONFIGS],
)
def test_malformed_adapter_config_on_sync_route(
    request: pytest.FixtureRequest, client: httpx.Client, adapter_dir: Path,
    config: str | None, changes: dict[str, object], code: str,
) -> None:  # fmt: skip
    """A broken adapter is the client's 422 with a plain message, not a 500 WORKER_ERROR."""
    case = request.node.callspec.id.replace(" ", "-")
    lora_id = _adapter_like(adapter_dir, f"broken/{case}", config, **changes)
    body = {"items": [{"text": "hello"}], "params": {"options": {"lora_id": lora_id}}}
    response = client.post(f"/v1/encode/{MODEL}", json=body, headers={"accept": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "Error" not in error["message"] and "Traceback" not in error["message"]


def test_redos_pattern_adapter_does_not_freeze_the_worker(
    client: httpx.Client, adapter_dir: Path
) -> None:
    """This rank_pattern key backtracks for hours in Python's `re`, which holds the GIL: put into
    a regex, it froze every thread of the worker. Now it is refused unevaluated, every time,
    while base jobs keep being served."""
    lora_id = _adapter_like(adapter_dir, "evil/redos", rank_pattern={"(.*.*)*!": 4})
    jobs = [submit(client, MODEL, ["x"], lora_id=lora_id) for _ in range(2)]
    jobs.append(submit(client, MODEL, ["an ordinary base job"]))
    done = [wait_job(client, job_id, timeout=120) for job_id in jobs]
    assert [job["status"] for job in done] == ["failed", "failed", "succeeded"]
    assert {job["error"]["code"] for job in done[:2]} == {"ADAPTER_UNSUPPORTED"}
    assert client.get("/readyz").status_code == 200


def test_adapter_trained_on_the_same_model_elsewhere_is_served(
    client: httpx.Client, model_dir: Path, adapter_dir: Path
) -> None:
    """PEFT records wherever the trainer loaded the base from; by default the worker judges
    the adapter by its module shapes, and knows another site-packages copy of its own model."""
    names = {
        "elsewhere/venv": f"/opt/venv/lib/python3.12/site-packages/{model_dir.parent.name}/model",
        "elsewhere/local": "/data/models/all-MiniLM-L6-v2",
    }
    for lora_id, trained_on in names.items():
        save_random_adapter(
            model_dir, adapter_dir / lora_id, trained_on, seed=7, r=4, lora_alpha=8,
            target_modules=["query", "value"],
        )  # fmt: skip
    for lora_id in names:
        job = wait_job(client, submit(client, MODEL, ["hello"], lora_id=lora_id))
        assert job["status"] == "succeeded", job["error"]
