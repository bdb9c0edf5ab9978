"""The adapter registry's routes (`api/routes/adapters.py`) on a real socket and a real Redis,
with API keys on and no worker: uploads (files and archives) checked against a tiny base model's
config, revisions, what jobs are sent (`org/name@<hash>`), tenancy, limits, pins and deletes.

The gateway's model is a tiny BERT by its config alone (2 layers, hidden size 32); adapters are
written here with numpy in PEFT's layout. The refusal of every corrupt kind with the worker's
own code is in tests/unit/test_adapter_upload.py, on PEFT-made adapters.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from safetensors.numpy import save

from api.batch_runner import chunk_job_id
from api.main import create_app
from common import keys
from common.adapter_check import content_hash
from common.adapters import CONFIG_FILE, WEIGHTS_FILE
from common.schemas import EncodeMessage
from loraq.stack import free_port, wait_until
from loraq_client import LoraqClient, NotFoundError, batch_lines
from tests.asgi_server import serve
from tests.cli import cli
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import Keys, code, job_body, settings
from tests.integration.test_object_store import S3_ENV

pytestmark = pytest.mark.integration

TENANTS = (
    "acme", "oai", "corrupt", "forms", "other", "doomed", "capped", "pins", "sizes", "archives",
    "sharer", "friend", "cli", "imports", "batcher", "lister", "ordered",
)  # fmt: skip
HIDDEN, LAYERS = 32, 2
MAX_ADAPTERS = 3
MAX_PINNED = 1
MAX_UPLOAD = 64 * 1024


def tiny_config(root: Path) -> None:
    config = {
        "model_type": "bert", "hidden_size": HIDDEN, "intermediate_size": 64,
        "num_hidden_layers": LAYERS, "num_attention_heads": 2, "max_position_embeddings": 64,
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))


def adapter_files(seed: int = 0, r: int = 2, alpha: float = 4.0, **config: Any) -> dict[str, bytes]:
    """A LoRA on every layer's query, in PEFT's save format."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(LAYERS):
        prefix = f"base_model.model.encoder.layer.{layer}.attention.self.query"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, HIDDEN)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((HIDDEN, r)).astype(np.float32)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["query"], **config}
    return {CONFIG_FILE: json.dumps(cfg).encode(), WEIGHTS_FILE: save(tensors)}


def revision_of(files: dict[str, bytes]) -> str:
    return content_hash(files[CONFIG_FILE], files[WEIGHTS_FILE])


@dataclass
class Served:
    url: str
    keys: Keys
    root: Path
    redis_url: str

    def http(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.keys.headers(tenant), timeout=60)


class FakeHub:
    """The Hub's file API (`/<repo>/resolve/<revision>/<file>`) over a dict, on a real socket;
    it remembers each request's path and whether it carried a token."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, bool]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append((self.path, "authorization" in self.headers))
                data = hub.files.get(self.path)
                self.send_response(404 if data is None else 200)
                self.send_header("content-length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, repo: str, revision: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.files[f"/{repo}/resolve/{revision}/{name}"] = data


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local S3-compatible server (moto's) with the bucket `imports`; a boto3 client of it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        for bucket in ("imports", "private"):
            client.create_bucket(Bucket=bucket)
        yield client
        server.stop()


@pytest.fixture(scope="module")
def served(
    private_redis_url: str, tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, s3: Any
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("adapters-api")
    tiny_config(root)
    api_keys = Keys()
    entries = [api_keys.entry(t, rate_per_s=1000, burst=1000) for t in TENANTS]
    entries.append(api_keys.entry("ops", admin=True))
    adapters = {
        "dir": root / "adapters", "store": str(root / "store"),
        "max_adapters_per_tenant": MAX_ADAPTERS, "max_pinned_per_tenant": MAX_PINNED,
        "max_upload_bytes": MAX_UPLOAD, "max_bytes_per_tenant": 20_000, "delete_grace_s": 1,
        "s3_endpoint": s3.meta.endpoint_url,
        "import_s3_buckets": ["imports"],
    }  # fmt: skip
    bulk = {"store": str(root / "files"), "poll_s": 0.1}
    with pytest.MonkeyPatch.context() as env:  # the Hub mirror as operators set it for any HF tool
        env.setenv("HF_ENDPOINT", hub.url)
        s = settings(private_redis_url, root, entries, adapters=adapters, bulk=bulk)
    assert s.adapters.hub_endpoint == hub.url
    with serve(create_app(s)) as url:
        yield Served(url, api_keys, root, private_redis_url)


def push(client: httpx.Client, name: str, files: dict[str, bytes], **fields: str) -> httpx.Response:
    parts = [("file", (filename, data)) for filename, data in files.items()]
    return client.post("/v1/adapters", files=parts, data={"name": name, **fields})


def tar_of(files: dict[str, bytes], folder: str = "my-adapter", gz: bool = True) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return out.getvalue()


def queued_message(redis_url: str, job_id: str) -> EncodeMessage:
    raw = redis.Redis.from_url(redis_url).get(keys.job_message(job_id))
    assert raw is not None
    return EncodeMessage.model_validate_json(raw)


def submit(client: httpx.Client, lora_id: str) -> httpx.Response:
    return client.post("/v1/jobs", json=job_body(lora_id=lora_id))


def test_upload_then_jobs_get_the_latest_or_the_pinned_revision(served: Served) -> None:
    first, second = adapter_files(seed=1), adapter_files(seed=2)
    with served.http("acme") as acme:
        created = push(acme, "acme/intent", first)
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["id"] == "acme/intent" and view["owner"] == "acme"
        assert view["latest"] == revision_of(first) and view["rank"] == 2
        assert view["targets"] == ["attention.self.query"] and view["model"] == FAKE_MODEL
        assert view["bytes"] == len(first[CONFIG_FILE]) + len(first[WEIGHTS_FILE])

        job = submit(acme, "acme/intent")
        assert job.status_code == 202, job.text
        old = f"acme/intent@{revision_of(first)}"
        assert queued_message(served.redis_url, job.json()["id"]).lora_id == old

        assert push(acme, "acme/intent", second).status_code == 201
        new = f"acme/intent@{revision_of(second)}"
        latest = submit(acme, "acme/intent").json()["id"]
        pinned = submit(acme, old).json()["id"]
        assert queued_message(served.redis_url, latest).lora_id == new
        assert queued_message(served.redis_url, pinned).lora_id == old
        # The job queued before the new revision keeps its own.
        assert queued_message(served.redis_url, job.json()["id"]).lora_id == old

        shown = acme.get("/v1/adapters/acme/intent").json()
        assert [r["hash"] for r in shown["revisions"]] == [revision_of(first), revision_of(second)]
        assert shown["jobs"] == 3 and shown["latest"] == revision_of(second)
        assert code(submit(acme, "acme/intent@" + "0" * 16)) == (404, "ADAPTER_NOT_FOUND")

        again = push(acme, "acme/intent", first)  # the same files: the old revision, latest again
        assert again.status_code == 201 and again.json()["latest"] == revision_of(first)
        assert len(again.json()["revisions"]) == 2


def test_revisions_are_listed_in_the_order_they_were_uploaded(served: Served) -> None:
    """Uploads within one second share `created_at`: the order comes from the recording
    script's count, not from the hashes (which sorted them at random before)."""
    uploads = [adapter_files(seed=seed) for seed in (11, 12, 13, 14)]
    with served.http("ordered") as http:
        for files in uploads:
            assert push(http, "ordered/revisions", files).status_code == 201
        shown = http.get("/v1/adapters/ordered/revisions").json()
    assert [r["hash"] for r in shown["revisions"]] == [revision_of(f) for f in uploads]


def test_openai_route_takes_model_colon_adapter_at_hash(served: Served) -> None:
    files = adapter_files(seed=3)
    with served.http("oai") as acme:
        assert push(acme, "oai/openai", files).status_code == 201
        # The model has no files here: the sync route queues the job, then times out; the
        # refusals come first, so a missing revision is told at once.
        missing = acme.post(
            "/v1/embeddings", json={"model": f"{FAKE_MODEL}:oai/openai@{'f' * 16}", "input": "x"}
        )
        assert code(missing) == (404, "ADAPTER_NOT_FOUND")


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_archives_upload_like_files(served: Served, kind: str) -> None:
    files = adapter_files(seed=10 + len(kind))
    archive = {
        "tar.gz": tar_of(files), "tar": tar_of(files, gz=False), "zip": zip_of(files),
    }[kind]  # fmt: skip
    with served.http("archives") as client:
        response = push(client, f"archives/{kind.replace('.', '-')}", {f"a.{kind}": archive})
        assert response.status_code == 201, response.text
        assert response.json()["latest"] == revision_of(files)
        client.delete(f"/v1/adapters/archives/{kind.replace('.', '-')}")


def hostile_tar(kind: str) -> bytes:
    files = adapter_files()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        if kind == "traversal":
            info = tarfile.TarInfo(f"../{CONFIG_FILE}")
            info.size = len(files[CONFIG_FILE])
            tar.addfile(info, io.BytesIO(files[CONFIG_FILE]))
        elif kind == "symlink":
            info = tarfile.TarInfo(CONFIG_FILE)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "many":
            for i in range(100):
                info = tarfile.TarInfo(f"f{i}")
                tar.addfile(info, io.BytesIO(b""))
        elif kind == "bomb":  # 10 MB of zeros, a few KB compressed
            info = tarfile.TarInfo(WEIGHTS_FILE)
            info.size = 10 * 1024 * 1024
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["traversal", "symlink", "many", "bomb", "garbage"])
def test_hostile_archives_refused(served: Served, kind: str) -> None:
    archive = b"not an archive at all" * 10 if kind == "garbage" else hostile_tar(kind)
    with served.http("archives") as client:
        response = push(client, "archives/hostile", {"a.tar.gz": archive})
        assert code(response) == (422, "INVALID_INPUT"), response.text
        assert code(client.get("/v1/adapters/archives/hostile")) == (404, "ADAPTER_NOT_FOUND")


def test_corrupt_adapters_refused_with_the_workers_codes(served: Served) -> None:
    good = adapter_files()
    cases = {
        "ADAPTER_NOT_LORA": {**good, CONFIG_FILE: b'{"peft_type": "IA3"}'},
        "ADAPTER_CONFIG_INVALID": {**good, CONFIG_FILE: b"{not json"},
        "ADAPTER_TENSORS_MISMATCH": {**good, WEIGHTS_FILE: b"\x08" + bytes(7) + b"garbage!"},
        "ADAPTER_SHAPE_MISMATCH": adapter_files(r=2, rank_pattern={"query": 3}),
        "ADAPTER_UNSAFE_FORMAT": {CONFIG_FILE: good[CONFIG_FILE], "adapter_model.bin": b"x"},
        "ADAPTER_NON_FINITE": adapter_files(alpha=float("inf")),
        "ADAPTER_SCALE_TOO_LARGE": adapter_files(alpha=1e6),
        "ADAPTER_UNSUPPORTED": adapter_files(use_dora=True),
        "ADAPTER_TARGET_MISSING": adapter_files(target_modules=["q_proj"]),
        "ADAPTER_RANK_TOO_HIGH": adapter_files(r=65),
    }
    with served.http("corrupt") as client:
        for expected, files in cases.items():
            response = push(client, "corrupt/broken", files)
            assert code(response) == (422, expected), (expected, response.text)
        assert code(client.get("/v1/adapters/corrupt/broken")) == (404, "ADAPTER_NOT_FOUND")


def test_bad_forms_refused(served: Served) -> None:
    files = adapter_files()
    with served.http("forms") as client:
        assert code(push(client, "forms/x", {"README.md": b"hi"})) == (422, "INVALID_INPUT")
        assert code(push(client, "forms/x", {CONFIG_FILE: files[CONFIG_FILE]})) == (
            422,
            "ADAPTER_TENSORS_MISMATCH",
        )
        only_weights = push(client, "forms/x", {WEIGHTS_FILE: files[WEIGHTS_FILE]})
        assert code(only_weights) == (422, "INVALID_INPUT")
        assert code(push(client, "forms/x@" + "a" * 16, files)) == (422, "INVALID_INPUT")
        assert code(push(client, "../x", files)) == (422, "INVALID_LORA_ID")
        assert code(push(client, "forms/x", files, model="no/such")) == (404, "MODEL_NOT_FOUND")
        no_source = client.post("/v1/adapters", json={"name": "forms/x"})
        assert code(no_source) == (422, "INVALID_INPUT")
        plain = client.post("/v1/adapters", content=b"x", headers={"content-type": "text/plain"})
        assert code(plain) == (415, "UNSUPPORTED_MEDIA_TYPE")


def test_tenancy_of_every_route(served: Served) -> None:
    files = adapter_files(seed=5)
    with served.http("acme") as acme, served.http("other") as other:
        assert push(acme, "acme/private", files).status_code == 201
        missing = other.get("/v1/adapters/acme/nothing-here")
        for response in (
            other.get("/v1/adapters/acme/private"),
            other.delete("/v1/adapters/acme/private"),
            other.post("/v1/adapters/acme/private/pin"),
            other.post("/v1/adapters/acme/private/unpin"),
            other.put("/v1/adapters/acme/private/sharing", json={"tenants": ["other"]}),
            submit(other, "acme/private"),
            submit(other, f"acme/private@{revision_of(files)}"),
            other.post(
                "/v1/embeddings", json={"model": f"{FAKE_MODEL}:acme/private", "input": "x"}
            ),
        ):
            assert code(response) == code(missing) == (404, "ADAPTER_NOT_FOUND")
            assert "private" in response.json()["error"]["message"]
        assert all(a["id"] != "acme/private" for a in other.get("/v1/adapters").json()["data"])
        # Uploads go into the caller's own namespace only.
        assert code(push(other, "acme/private", files)) == (403, "ADAPTER_FORBIDDEN")
        workers = other.get("/v1/workers").text
        assert "acme/" not in workers
        assert acme.get("/v1/adapters/acme/private").status_code == 200


def test_sharing(served: Served) -> None:
    files = adapter_files(seed=6)
    with served.http("sharer") as sharer, served.http("friend") as friend:
        assert push(sharer, "sharer/common", files).status_code == 201
        assert code(friend.get("/v1/adapters/sharer/common"))[0] == 404
        shared = sharer.put("/v1/adapters/sharer/common/sharing", json={"tenants": ["friend"]})
        assert shared.json()["shared_with"] == ["friend"]
        seen = friend.get("/v1/adapters/sharer/common").json()
        assert seen["shared_with"] is None  # whom else it is shared with is the owner's business
        assert [a["id"] for a in friend.get("/v1/adapters").json()["data"]] == ["sharer/common"]
        job = submit(friend, "sharer/common")
        assert job.status_code == 202
        assert queued_message(served.redis_url, job.json()["id"]).lora_id.startswith(
            "sharer/common@"
        )
        assert code(friend.delete("/v1/adapters/sharer/common")) == (403, "ADAPTER_FORBIDDEN")
        sharer.put("/v1/adapters/sharer/common/sharing", json={"tenants": []})
        assert code(submit(friend, "sharer/common")) == (404, "ADAPTER_NOT_FOUND")
        assert friend.get("/v1/adapters").json()["data"] == []


def test_limits(served: Served) -> None:
    with served.http("capped") as capped:
        for i in range(MAX_ADAPTERS):
            assert push(capped, f"capped/a{i}", adapter_files(seed=20 + i)).status_code == 201
        assert code(push(capped, "capped/one-more", adapter_files(seed=30))) == (
            429,
            "TOO_MANY_ADAPTERS",
        )
        # A new revision of one held is still fine, within the byte cap.
        assert push(capped, "capped/a0", adapter_files(seed=31)).status_code == 201
        listed = capped.get("/v1/adapters", params={"limit": 2}).json()
        assert [a["id"] for a in listed["data"]] == ["capped/a0", "capped/a1"]
        assert listed["has_more"]
        rest = capped.get("/v1/adapters", params={"after": listed["last_id"]}).json()
        assert [a["id"] for a in rest["data"]] == ["capped/a2"] and not rest["has_more"]
    with served.http("sizes") as sizes:
        big = adapter_files(r=128)  # over max_upload_bytes
        assert code(push(sizes, "sizes/big", big)) == (413, "FILE_TOO_LARGE")
        for i in range(MAX_ADAPTERS):  # each about 8.5 KB: the byte cap comes first
            response = push(sizes, f"sizes/s{i}", adapter_files(seed=40 + i, r=16))
            if response.status_code != 201:
                assert code(response) == (429, "ADAPTER_STORAGE_FULL")
                break
        else:
            pytest.fail("the byte cap was never reached")


def test_pin_unpin_and_their_cap(served: Served) -> None:
    with served.http("pins") as pins:
        for name in ("pins/a", "pins/b"):
            assert push(pins, name, adapter_files(seed=50 + len(name))).status_code == 201
        pinned = pins.post("/v1/adapters/pins/a/pin")
        assert pinned.status_code == 200 and pinned.json()["pinned"]
        assert code(pins.post("/v1/adapters/pins/b/pin")) == (429, "TOO_MANY_PINNED")
        r = redis.Redis.from_url(served.redis_url)
        entry = json.loads(r.hget(keys.PINNED_ADAPTERS, "pins/a") or b"{}")
        assert entry == {"revision": pinned.json()["latest"], "model": FAKE_MODEL}
        newer = push(pins, "pins/a", adapter_files(seed=99)).json()
        assert (
            json.loads(r.hget(keys.PINNED_ADAPTERS, "pins/a") or b"{}")["revision"]
            == (newer["latest"])
        )
        assert not pins.post("/v1/adapters/pins/a/unpin").json()["pinned"]
        assert r.hget(keys.PINNED_ADAPTERS, "pins/a") is None
        assert pins.post("/v1/adapters/pins/b/pin").json()["pinned"]


def test_delete_refuses_new_jobs_and_tells_workers(served: Served) -> None:
    files = adapter_files(seed=60)
    revision = revision_of(files)
    with served.http("doomed") as client:
        assert push(client, "doomed/a", files).status_code == 201
        stored = served.root / "store" / "adapters" / "doomed" / "a" / revision
        assert (stored / WEIGHTS_FILE).read_bytes() == files[WEIGHTS_FILE]
        deleted = client.delete("/v1/adapters/doomed/a")
        assert deleted.json() == {"id": "doomed/a", "object": "adapter", "deleted": True}
        assert code(submit(client, "doomed/a")) == (404, "ADAPTER_NOT_FOUND")
        assert code(client.get("/v1/adapters/doomed/a")) == (404, "ADAPTER_NOT_FOUND")
        assert code(client.delete("/v1/adapters/doomed/a")) == (404, "ADAPTER_NOT_FOUND")
        r = redis.Redis.from_url(served.redis_url)
        assert r.zscore(keys.DELETED_ADAPTERS, f"doomed/a@{revision}") is not None
        # Jobs queued before the delete still find the files, for delete_grace_s (1 s here);
        # then whoever uploads or deletes next deletes them.
        assert stored.exists()

        def swept() -> bool:
            push(client, "doomed/next", adapter_files(seed=61))
            return not stored.exists()

        wait_until(swept, 30, "the deleted adapter's files to go")
        assert r.zscore(keys.DELETED_ADAPTERS, f"doomed/a@{revision}") is None


def test_sdk_and_cli(served: Served, tmp_path: Path) -> None:
    directory = tmp_path / "my-adapter"
    directory.mkdir()
    first = adapter_files(seed=70)
    for name, data in first.items():
        (directory / name).write_bytes(data)
    (directory / "README.md").write_text("not sent")
    key = served.keys.headers("cli")["authorization"].removeprefix("Bearer ")
    with LoraqClient(served.url, api_key=key) as client:
        pushed = client.push_adapter(directory, "cli/sdk")
        assert pushed["latest"] == revision_of(first)
        archive = tmp_path / "second.tar.gz"
        second = adapter_files(seed=71)
        archive.write_bytes(tar_of(second))
        assert client.push_adapter(archive, "cli/sdk")["latest"] == revision_of(second)
        assert [a["id"] for a in client.iter_adapters(page_size=1)] == ["cli/sdk"]
        assert client.pin_adapter("cli/sdk")["pinned"]
        assert not client.unpin_adapter("cli/sdk")["pinned"]
        assert client.share_adapter("cli/sdk", ["friend"])["shared_with"] == ["friend"]
        with pytest.raises(NotFoundError):
            client.adapter("acme/intent")  # another tenant's
        with pytest.raises(ValueError, match=r"no adapter_config\.json"):
            client.push_adapter(tmp_path, "cli/x")

    env = {"LORAQ_URL": served.url, "LORAQ_API_KEY": key}
    listed = cli("adapters", "ls", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\t")[:2] == ["cli/sdk", revision_of(second)]
    shown = cli("adapters", "show", "cli/sdk", env=env)
    assert json.loads(shown.stdout)["revisions"][0]["hash"] == revision_of(first)
    pushed_again = cli("adapters", "push", str(directory), "--name", "cli/sdk", env=env)
    assert json.loads(pushed_again.stdout)["latest"] == revision_of(first)
    assert json.loads(cli("adapters", "pin", "cli/sdk", env=env).stdout)["pinned"]
    assert json.loads(cli("adapters", "rm", "cli/sdk", env=env).stdout)["deleted"]
    missing = cli("adapters", "show", "cli/sdk", env=env)
    assert missing.returncode == 1 and "ADAPTER_NOT_FOUND" in missing.stderr


def test_import_from_the_hub(served: Served, hub: FakeHub) -> None:
    files = adapter_files(seed=80)
    hub.publish("someone/legal-lora", "v2", files)
    hub.publish(
        "someone/pickled", "main", {CONFIG_FILE: files[CONFIG_FILE], "adapter_model.bin": b"x"}
    )
    hub.publish("someone/broken", "main", {**files, CONFIG_FILE: b'{"peft_type": "IA3"}'})
    with served.http("imports") as client:

        def imported(source: str, name: str = "imports/hub") -> httpx.Response:
            return client.post("/v1/adapters", json={"name": name, "source": source})

        response = imported("hf://someone/legal-lora@v2")
        assert response.status_code == 201, response.text
        assert response.json()["latest"] == revision_of(files)
        assert not any(token for _, token in hub.requests), "no token goes to the Hub"
        assert code(imported("hf://someone/legal-lora@v3")) == (404, "ADAPTER_NOT_FOUND")
        assert code(imported("hf://someone/pickled")) == (422, "ADAPTER_UNSAFE_FORMAT")
        assert code(imported("hf://someone/broken")) == (422, "ADAPTER_NOT_LORA")
        assert code(imported("hf://../etc@main")) == (422, "INVALID_INPUT")
        assert code(imported("hf://someone/legal-lora@../../x")) == (422, "INVALID_INPUT")
        assert code(imported("ftp://somewhere/x")) == (422, "INVALID_INPUT")
        assert code(imported("hf://someone/legal-lora@v2", "acme/theirs")) == (
            403,
            "ADAPTER_FORBIDDEN",
        )
        job = submit(client, "imports/hub")
        assert queued_message(served.redis_url, job.json()["id"]).lora_id == (
            f"imports/hub@{revision_of(files)}"
        )


def test_import_from_s3(served: Served, s3: Any) -> None:
    files = adapter_files(seed=81)
    for name, data in files.items():
        s3.put_object(Bucket="imports", Key=f"team/adapters/x/{name}", Body=data)
        s3.put_object(Bucket="private", Key=f"x/{name}", Body=data)
    s3.put_object(Bucket="imports", Key=f"config-only/{CONFIG_FILE}", Body=files[CONFIG_FILE])
    with served.http("imports") as client:

        def imported(source: str) -> httpx.Response:
            return client.post("/v1/adapters", json={"name": "imports/s3", "source": source})

        response = imported("s3://imports/team/adapters/x/")
        assert response.status_code == 201, response.text
        assert response.json()["latest"] == revision_of(files)
        assert code(imported("s3://private/x")) == (403, "ADAPTER_FORBIDDEN")
        assert code(imported("s3://imports/nothing/here")) == (404, "ADAPTER_NOT_FOUND")
        assert code(imported("s3://imports/config-only")) == (422, "ADAPTER_TENSORS_MISMATCH")
        assert code(imported("s3://imports/a/../b")) == (422, "INVALID_INPUT")


def test_a_batch_runs_on_the_revisions_of_when_it_started(served: Served) -> None:
    first, second = adapter_files(seed=90), adapter_files(seed=91)
    r = redis.Redis.from_url(served.redis_url)
    with served.http("batcher") as client:
        assert push(client, "batcher/x", first).status_code == 201
        assert push(client, "batcher/old", adapter_files(seed=92)).status_code == 201
        old = revision_of(adapter_files(seed=92))
        assert push(client, "batcher/old", adapter_files(seed=93)).status_code == 201
        lines = [
            *batch_lines(["a", "b"], FAKE_MODEL, "batcher/x"),
            *batch_lines(["c"], f"{FAKE_MODEL}:batcher/old@{old}", custom_id_prefix="pinned-"),
            *batch_lines(["d"], FAKE_MODEL, "batcher/missing", custom_id_prefix="missing-"),
            *batch_lines(["e"], FAKE_MODEL, "acme/intent", custom_id_prefix="theirs-"),
        ]
        uploaded = client.post(
            "/v1/files", files={"file": ("in.jsonl", "".join(lines).encode())},
            data={"purpose": "batch"},
        )  # fmt: skip
        assert uploaded.status_code == 200, uploaded.text
        batch = client.post(
            "/v1/batches",
            json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/embeddings",
                  "completion_window": "24h"},
        ).json()  # fmt: skip
        wait_until(
            lambda: r.exists(keys.job_message(chunk_job_id(batch["id"], 1))),
            30,
            "the batch's chunks to be queued",
        )
        # Uploaded after the batch started: its chunks keep the revision they were split with.
        assert push(client, "batcher/x", second).status_code == 201
        carried = {
            queued_message(served.redis_url, chunk_job_id(batch["id"], k)).lora_id for k in range(2)
        }
        assert carried == {f"batcher/x@{revision_of(first)}", f"batcher/old@{old}"}
        view = client.get(f"/v1/batches/{batch['id']}").json()
        assert view["request_counts"]["failed"] == 2  # the missing one and another tenant's


def test_operators_list_every_orgs_adapters(served: Served) -> None:
    with served.http("lister") as client, served.http("ops") as ops:
        assert push(client, "lister/a", adapter_files(seed=95)).status_code == 201
        assert push(ops, "elsewhere/by-ops", adapter_files(seed=96)).status_code == 201
        listed = [a["id"] for a in ops.get("/v1/adapters").json()["data"]]
        assert {"lister/a", "elsewhere/by-ops"} <= set(listed)
        assert [a["id"] for a in client.get("/v1/adapters").json()["data"]] == ["lister/a"]
        assert ops.delete("/v1/adapters/lister/a").status_code == 200
        assert ops.delete("/v1/adapters/elsewhere/by-ops").status_code == 200
