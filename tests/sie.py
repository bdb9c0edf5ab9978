"""Requests on the SIE wire as SIE clients send them (msgpack in, msgpack accepted), shared by
the tests that run the sync route with a worker and those that need only the gateway."""

from __future__ import annotations

import msgpack

HEADERS = {"content-type": "application/msgpack", "accept": "application/msgpack"}


def body(texts: list[str], lora_id: str | None = None) -> bytes:
    """Items with ids `d0, d1, ...`; with `lora_id`, the options an SIE client sends with it."""
    request: dict[str, object] = {
        "items": [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    }
    if lora_id:
        request["params"] = {"options": {"lora_id": lora_id, "is_query": False}}
    packed: bytes = msgpack.packb(request, use_bin_type=True)
    return packed
