"""Token ids in a queue message: the gateway tokenizes, so the GPU worker does not have to.

Gateways scale out; a GPU worker is one process whose CPU decides how busy its GPU stays, and
tokenizing was the largest part of that CPU for long texts (`bench/control_plane.py`, drain).
The ids travel as one little-endian int32 buffer (base64) plus each item's length: decoding is
a copy, not a JSON parse of every id. `tokenizer` names the tokenizer files and length limit that
made them (`ModelTokenizer.id`): a worker uses the ids only if it would have made the same ones,
and tokenizes the texts, which the message always carries, otherwise.
"""

from __future__ import annotations

import base64

import numpy as np

from common.schemas import TokenIds


def pack(tokenizer: str, ids: list[list[int]]) -> TokenIds:
    flat = np.fromiter((t for row in ids for t in row), dtype="<i4")
    return TokenIds(
        tokenizer=tokenizer,
        lengths=[len(row) for row in ids],
        ids=base64.b64encode(flat.tobytes()).decode(),
    )


def unpack(tokens: TokenIds, items: int) -> list[list[int]]:
    """Raises ValueError if the buffer does not hold `items` rows of the stated lengths."""
    flat = np.frombuffer(base64.b64decode(tokens.ids, validate=True), dtype="<i4")
    if len(tokens.lengths) != items or sum(tokens.lengths) != len(flat):
        raise ValueError("token ids do not match the message's items")
    values = flat.tolist()
    rows, start = [], 0
    for length in tokens.lengths:
        rows.append(values[start : start + length])
        start += length
    return rows
