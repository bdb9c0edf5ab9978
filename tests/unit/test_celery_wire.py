"""The queue entry the job store pushes at submit (common/celery_wire.py): what Celery consumes."""

from __future__ import annotations

import asyncio
import json

import fakeredis
import pytest
from celery import Celery
from kombu import Connection
from kombu.transport.virtual.base import Message

from common import keys
from common.celery_wire import envelope
from common.job_store import AsyncJobStore
from common.schemas import EncodeMessage, JobStatus, StoredJob

pytestmark = pytest.mark.unit

MESSAGE = EncodeMessage(
    job_id="job_abcdefghijklmnop", model="m/1", lora_id="acme/a", texts=["secret text", "two"],
    normalize=None, truncate=True, enqueued_at=1.5,
)  # fmt: skip


def _decoded(entry: bytes) -> Message:
    """The entry as kombu's virtual transports (Redis among them) hand it to a consumer."""
    return Message(json.loads(entry), channel=Connection("memory://").default_channel)


def test_a_consumer_decodes_the_task_and_its_message() -> None:
    raw = MESSAGE.model_dump_json().encode()
    message = _decoded(envelope(raw, MESSAGE.job_id, "jobs.q"))
    args, kwargs, embed = message.decode()
    assert EncodeMessage.model_validate(args[0]) == MESSAGE
    assert (kwargs, embed["chain"], embed["callbacks"]) == ({}, None, None)
    assert message.headers["task"] == keys.TASK_ENCODE
    assert message.headers["id"] == message.properties["correlation_id"] == MESSAGE.job_id
    assert message.delivery_info["routing_key"] == "jobs.q"


def test_the_headers_are_those_celery_itself_writes() -> None:
    """Celery's own protocol-2 message for the same task: every header it sets is set here, so
    a Celery upgrade that adds one fails this test instead of silently changing workers."""
    app = Celery(set_as_current=False)
    own = app.amqp.as_task_v2(MESSAGE.job_id, keys.TASK_ENCODE, args=[{}], kwargs={})
    ours = _decoded(envelope(b"{}", MESSAGE.job_id, "q")).headers
    assert set(own.headers) <= set(ours), set(own.headers) - set(ours)


def test_logs_never_show_texts_and_delivery_tags_are_unique() -> None:
    raw = MESSAGE.model_dump_json().encode()
    first, second = (json.loads(envelope(raw, MESSAGE.job_id, "q")) for _ in range(2))
    assert "secret" not in first["headers"]["argsrepr"] + first["headers"]["kwargsrepr"]
    tags = {e["properties"]["delivery_tag"] for e in (first, second)}
    assert len(tags) == 2


def test_create_queues_the_message_with_the_record_and_a_refusal_queues_nothing() -> None:
    server = fakeredis.FakeServer()
    job = StoredJob(
        id=MESSAGE.job_id, status=JobStatus.QUEUED, model="m/1", n_items=2, created_at=1.5,
        tenant="acme",
    )  # fmt: skip
    queue = keys.queue_list("jobs.q")

    async def scenario() -> tuple[object, object]:
        client = fakeredis.FakeAsyncRedis(server=server)
        store = AsyncJobStore(client, 60)
        raw = MESSAGE.model_dump_json().encode()
        created = await store.create(job, raw, "jobs.q", max_queued_items=3)
        refused = await store.create(
            job.model_copy(update={"id": "job_other0000000000"}), raw, "jobs.q", 3
        )
        await client.aclose()
        return created, refused

    created, refused = asyncio.run(scenario())
    assert (created, refused) == (None, ("items", 2))
    r = fakeredis.FakeRedis(server=server)
    entries = r.lrange(queue, 0, -1)
    assert len(entries) == 1
    args, _, _ = _decoded(entries[0]).decode()
    assert EncodeMessage.model_validate(args[0]) == MESSAGE
    assert not r.exists(keys.job("job_other0000000000"))
