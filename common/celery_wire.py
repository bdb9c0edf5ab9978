"""An encode job's message as it lies on its queue: what Celery workers consume.

The gateway pushes this entry in the same Lua call that records the job (`common.job_store`), so a
submit is one Redis round trip on the event loop, and a job is never recorded without its
message nor queued without its record; Celery's own publish would need a thread (it blocks) and
round trips of its own. The entry is exactly what kombu's Redis transport stores for a Celery
task (task protocol 2, JSON, base64 body), so a Celery worker consumes it unchanged.
"""

from __future__ import annotations

import base64
import json
import secrets

from common import keys

#: The task protocol's "embed" part: no callbacks, chains or chords.
_EMBED = b'{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


def envelope(message: bytes, job_id: str, queue: str, priority: int = 0) -> bytes:
    """The queue entry of an encode task whose argument is `message` (an `EncodeMessage` as
    JSON). Its `argsrepr`, which Celery logs, holds the job id only, never the tenant's texts;
    the delivery tag, under which the broker keeps the message while a worker holds it unacked,
    is unique per entry. `priority` must match the list the entry is pushed to: kombu puts an
    unacked message back on the list of the priority it reads here."""
    body = b"[[" + message + b"], {}, " + _EMBED + b"]"
    headers: dict[str, object] = {
        "lang": "py", "task": keys.TASK_ENCODE, "id": job_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": job_id, "parent_id": None,
        "argsrepr": f"({job_id!r},)", "kwargsrepr": "{}", "origin": "loraq",
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    entry = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": secrets.token_hex(16),
        },
    }
    return json.dumps(entry, separators=(",", ":")).encode()
