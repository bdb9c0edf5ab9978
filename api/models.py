"""HTTP request and response models: the gateway's side of the wire, not the worker's.

The request's item and params shape is SIE's encode request, so `client.encode(model, items,
options={"lora_id": ...})` maps onto a job one to one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.schemas import JobStatus, LoraId
from common.settings import MAX_ITEMS_CEILING

#: A model id or an adapter-qualified one (`<model>:<lora_id>`), at most.
MAX_MODEL_CHARS = 512


class Item(BaseModel):
    # SIE items may carry fields loraq does not use (images, metadata): ignored, as SIE does.
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, max_length=256)
    text: str


class EncodeOptions(BaseModel):
    # SIE ignores option keys it does not know (e.g. `is_query`); so do we.
    model_config = ConfigDict(extra="ignore")

    lora_id: LoraId | None = None
    normalize: bool | None = None
    truncate: bool = True


class EncodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    options: EncodeOptions = EncodeOptions()
    output_types: list[Literal["dense"]] | None = Field(None, max_length=8)
    output_dtype: Literal["float32"] | None = None


class EncodeRequest(BaseModel):
    """The SIE encode body; the model comes from the URL on the sync route."""

    model_config = ConfigDict(extra="forbid")

    # fail_fast: a list of bad items is refused at its first bad one, not with an error each.
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS_CEILING, fail_fast=True)
    params: EncodeParams = EncodeParams()


WebhookEvent = Literal["succeeded", "failed", "cancelled"]
ALL_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(ALL_EVENTS), min_length=1, max_length=8
    )


class JobRequest(EncodeRequest):
    model: str = Field(max_length=MAX_MODEL_CHARS)
    webhook: WebhookSpec | None = None


class JobLinks(BaseModel):
    self: str


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    links: JobLinks


class ErrorInfo(BaseModel):
    code: str
    message: str
    #: On 504 `JOB_TIMEOUT`: the job goes on and can be polled.
    job_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo
