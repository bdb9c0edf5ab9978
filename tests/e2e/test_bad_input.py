"""Bad input that only a worker can judge (adapters it loads, texts it encodes) gets its own
status and error code, never a 500; what the gateway refuses alone is in tests/integration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgpack
import pytest

from loraq.testing import save_random_adapter
from tests.constants import MODEL
from tests.e2e.helpers import submit, wait_job


def test_text_over_token_limit_is_truncated_by_default(client: httpx.Client) -> None:
    assert wait_job(client, submit(client, MODEL, ["word " * 400]))["status"] == "succeeded"


def test_msgpack_job_request(client: httpx.Client) -> None:
    body = msgpack.packb({"model": MODEL, "items": [{"text": "hello"}]}, use_bin_type=True)
    response = client.post(
        "/v1/jobs", content=body, headers={"content-type": "application/msgpack"}
    )
    assert response.status_code == 202
    assert wait_job(client, response.json()["id"])["status"] == "succeeded"


def test_adapter_refused_by_worker_fails_the_job(client: httpx.Client, adapter_dir: Path) -> None:
    """An adapter that exists (so submit accepts it) but is invalid fails its job with the
    validation code; the worker keeps serving."""
    bad = adapter_dir / "org" / "pickled"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (bad / "adapter_model.bin").write_bytes(b"not really a pickle")
    job = wait_job(client, submit(client, MODEL, ["hello"], lora_id="org/pickled"))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "ADAPTER_UNSAFE_FORMAT"
    assert wait_job(client, submit(client, MODEL, ["hello"]))["status"] == "succeeded"


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
