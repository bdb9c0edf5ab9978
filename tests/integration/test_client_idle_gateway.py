"""The Python client and the CLI against a gateway with API keys on and no worker: jobs stay
queued for as long as a test needs, and tenants are real. The keys come from `loraq keys
create`; the gateway runs in this process, on a real socket since the CLI is a process of its
own, and its model is a name only, so no worker of another test's stack takes its jobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from api.main import create_app
from loraq_client import (
    AuthenticationError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    LoraqClient,
    NotFoundError,
)
from tests.asgi_server import serve
from tests.cli import cli
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import settings


@dataclass
class IdleGateway:
    url: str
    keys: dict[str, str]  # tenant -> API key


@pytest.fixture(scope="module")
def idle(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleGateway]:
    keys, entries = {}, []
    for tenant in ("acme", "globex"):
        made = cli("keys", "create", "--tenant", tenant)
        assert made.returncode == 0, made.stderr
        key, entry = made.stdout.splitlines()
        keys[tenant] = key
        entries.append(json.loads(entry))
        assert entries[-1]["tenant"] == tenant and "LORAQ_AUTH__KEYS" in made.stderr
    s = settings(module_redis_url, tmp_path_factory.mktemp("idle"), entries)
    with serve(create_app(s)) as url:
        yield IdleGateway(url, keys)


def test_auth_tenants_cancel_and_timeouts(idle: IdleGateway) -> None:
    with LoraqClient(idle.url) as anonymous:
        with pytest.raises(AuthenticationError) as caught:
            anonymous.submit(FAKE_MODEL, ["x"])
        assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
    acme = LoraqClient(idle.url, api_key=idle.keys["acme"])
    globex = LoraqClient(idle.url, api_key=idle.keys["globex"])
    with acme, globex:
        job = acme.submit(FAKE_MODEL, ["one", "two"])
        with pytest.raises(JobTimeoutError) as timed_out:
            job.wait(timeout=0.5)
        assert timed_out.value.job_id == job.id
        with pytest.raises(NotFoundError):
            globex.get(job.id)
        with pytest.raises(NotFoundError):
            globex.cancel(job.id)

        assert job.cancel().status == "cancelled"
        with pytest.raises(JobFailedError) as failed:
            acme.get(job.id).wait(timeout=5)
        assert failed.value.code == "JOB_CANCELLED"
        with pytest.raises(InvalidRequestError) as refused:
            acme.cancel(job.id)
        assert (refused.value.status, refused.value.code) == (409, "JOB_NOT_CANCELLABLE")

        first = acme.submit(FAKE_MODEL, ["same"], idempotency_key="k-1")
        assert acme.submit(FAKE_MODEL, ["same"], idempotency_key="k-1").id == first.id
        assert globex.submit(FAKE_MODEL, ["same"], idempotency_key="k-1").id != first.id
        with pytest.raises(InvalidRequestError) as refused:
            acme.submit(FAKE_MODEL, ["other"], idempotency_key="k-1")
        assert refused.value.code == "IDEMPOTENCY_KEY_REUSED"


def test_cli_against_keyed_gateway(idle: IdleGateway) -> None:
    env = {"LORAQ_URL": idle.url, "LORAQ_API_KEY": idle.keys["acme"]}
    done = cli("submit", "--model", FAKE_MODEL, stdin="one\ntwo\n", env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    done = cli("wait", job_id, "--timeout", "0.5", env=env)
    assert done.returncode == 124 and "JOB_TIMEOUT" in done.stderr
    assert json.loads(cli("get", job_id, env=env).stdout)["status"] == "queued"
    done = cli("get", job_id, "--api-key", idle.keys["globex"], env=env)
    assert done.returncode == 1 and "JOB_NOT_FOUND" in done.stderr
    done = cli("get", job_id, "--url", idle.url)  # no key
    assert done.returncode == 1 and "UNAUTHORIZED" in done.stderr
    assert json.loads(cli("cancel", job_id, env=env).stdout)["status"] == "cancelled"
    done = cli("wait", job_id, env=env)
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "cancelled"
    assert "JOB_CANCELLED" in done.stderr
