"""OpenAI-compatible embeddings: `POST /v1/embeddings`, so the official `openai` client works
unchanged (`client.embeddings.create(model=..., input=...)`).

The adapter is chosen as `model: "<base model>:<lora_id>"` or with an extra `lora_id` field
(`extra_body={"lora_id": ...}` in the openai client). Jobs go through the same queue as every
other route; the request waits for them like the sync SIE route. `dimensions` shortens vectors
(first N values, L2-normalized again), as OpenAI does for its shortenable embedding models.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.body import parse_body
from api.deps import CallerDep, GatewayDep
from api.models import MAX_MODEL_CHARS, EncodeOptions, EncodeParams, EncodeRequest, Item
from api.openapi import error_responses, request_body
from api.submit import submit_and_wait
from common.errors import InvalidInput, ModelNotFound
from common.job_view import vectors
from common.schemas import LoraId, validate_lora_id
from common.settings import MAX_ITEMS_CEILING

router = APIRouter(tags=["openai"])


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=MAX_MODEL_CHARS)
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=MAX_ITEMS_CEILING, fail_fast=True)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    lora_id: LoraId | None = None


def split_model(model: str, lora_id: str | None, known: set[str]) -> tuple[str, str | None]:
    if model in known:
        return model, lora_id
    base, sep, adapter = model.rpartition(":")
    if sep and base in known:
        if lora_id is not None and lora_id != adapter:
            raise InvalidInput("the adapter is named twice, differently (model suffix and lora_id)")
        return base, validate_lora_id(adapter)
    raise ModelNotFound(f"model {model!r} is not served here; available: {sorted(known)}")


def shorten(matrix: np.ndarray, dims: int | None) -> np.ndarray:
    if dims is None or dims == matrix.shape[1]:
        return matrix
    if dims > matrix.shape[1]:
        raise InvalidInput(f"dimensions {dims} is more than the model's {matrix.shape[1]}")
    short = matrix[:, :dims]
    norms = np.linalg.norm(short, axis=1, keepdims=True)
    out: np.ndarray = (short / np.maximum(norms, 1e-12)).astype("<f4")
    return out


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    #: float32 values, or their little-endian bytes in base64 (`encoding_format`).
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


@router.post(
    "/v1/embeddings",
    responses={
        200: {"model": EmbeddingsResponse, "description": "One embedding per input, in order"},
        **error_responses(400, 403, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    openapi_extra=request_body(EmbeddingsRequest),
)
async def embeddings(request: Request, gw: GatewayDep, who: CallerDep) -> Response:
    body = await parse_body(request, EmbeddingsRequest, gw.settings.limits, items_field="input")
    model, lora_id = split_model(body.model, body.lora_id, set(gw.settings.models))
    texts = [body.input] if isinstance(body.input, str) else body.input
    encode = EncodeRequest(
        items=[Item(text=t) for t in texts],
        params=EncodeParams(options=EncodeOptions.model_construct(lora_id=lora_id)),
    )
    done, result = await submit_and_wait(gw, who, model, encode)
    matrix = shorten(vectors(done, result), body.dimensions)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode()
            if body.encoding_format == "base64"
            else row,
        }
        for i, row in enumerate(matrix)
    ]
    tokens = done.n_tokens or 0
    payload = {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
