"""The encoding engine: rows of token ids in, float32 vectors out, one forward pass for rows of
any mix of adapters.

Tokenizing is the worker's (`worker.tokenizing`, in task threads) and slot writes come from the
adapter cache's loader threads, so the single batch thread that calls `encode` does nothing but
compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worker.engine.encoder import PackedEncoder
from worker.engine.lora import AdapterWeights, LoraBatch, LoraPool, Segment
from worker.engine.packing import pack
from worker.engine.pooling import SentenceConfig, normalize_rows, pool, read_sentence_config
from worker.engine.types import BaseModelInfo, Pause, Row, no_pause

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Engine:
    """Built from its parts, so a test can hand it an encoder and pool it made itself; `load`
    builds those parts from a model directory."""

    def __init__(
        self,
        encoder: PackedEncoder,
        pool: LoraPool,
        base_info: BaseModelInfo,
        sentence: SentenceConfig,
        lora_backend: str | None = None,
    ) -> None:
        weight = next(encoder.parameters())
        self.device, dtype = weight.device, weight.dtype
        self.encoder = encoder
        self.pool = pool
        self.varlen_attention = encoder.use_varlen_attention(self.device, dtype)
        self.pooling = sentence.pooling
        self.default_normalize = sentence.normalize
        self.dims = encoder.hidden_size
        self._copy_stream = (
            torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            if self.device.type == "cuda"
            else None
        )
        self.lora_backend = lora_backend or ("segment" if self.device.type == "cpu" else "bmm")
        self._base_info = base_info

    @classmethod
    def load(
        cls,
        model_id: str,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        n_slots: int = 32,
        max_rank: int = 64,
        lora_backend: str | None = None,
    ) -> Engine:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        torch_device, torch_dtype = torch.device(device), _DTYPES[dtype]
        hf = AutoModel.from_pretrained(model_dir, dtype=torch_dtype)
        encoder = PackedEncoder(hf).to(torch_device).eval()
        pool = LoraPool(encoder.lora_groups(), n_slots, max_rank, torch_device, torch_dtype)
        base_info = BaseModelInfo(
            model_id=model_id,
            aliases=frozenset({model_id, str(model_dir), hf.config.name_or_path}),
            modules=encoder.target_modules(),
        )
        return cls(encoder, pool, base_info, read_sentence_config(model_dir), lora_backend)

    def base_model_info(self) -> BaseModelInfo:
        """What an adapter is validated against before `write_slot` takes it: the names this
        base model goes by and the shapes of the linears the pool can hold adapters for."""
        return self._base_info

    def write_slot(self, slot: int, weights: AdapterWeights) -> None:
        """Runs in a loader thread; on a GPU the copy has its own stream, so it overlaps the
        batch thread's forward, and is complete when this returns."""
        if self._copy_stream is None:
            self.pool.write(slot, weights)
            return
        with torch.cuda.stream(self._copy_stream):
            self.pool.write(slot, weights)
        self._copy_stream.synchronize()

    @torch.inference_mode()
    def encode(self, rows: list[Row], pause: Pause = no_pause) -> np.ndarray:
        """Vectors [len(rows), dims] float32, in the order of `rows`. On a GPU `pause` runs as
        the steps are queued, ahead of the device: what it runs waits for the steps queued so
        far, which is what a GPU's short forwards make acceptable."""
        order = sorted(range(len(rows)), key=lambda i: _slot_key(rows[i]))
        ordered = [rows[i] for i in order]
        tokens = [r.tokens for r in ordered]
        batch = pack(tokens, self.encoder.position_offset, self.device, not self.varlen_attention)
        lora = self._lora_batch(ordered)
        hidden = self.encoder(batch, lora, pause)
        vectors = pool(hidden, batch, self.pooling).float()
        flags = torch.tensor([r.normalize for r in ordered], device=self.device)
        vectors = normalize_rows(vectors, flags)
        out = np.empty((len(rows), self.dims), dtype=np.float32)
        out[order] = vectors.cpu().numpy()
        return out

    def _lora_batch(self, ordered: list[Row]) -> LoraBatch | None:
        segments: list[Segment] = []
        at = 0
        for row in ordered:
            end = at + len(row.tokens)
            if row.slot is not None:
                if segments and segments[-1].slot == row.slot:
                    segments[-1] = Segment(row.slot, segments[-1].start, end)
                else:
                    segments.append(Segment(row.slot, at, end))
            at = end
        return LoraBatch(self.pool, segments, self.lora_backend) if segments else None


def _slot_key(row: Row) -> int:
    return -1 if row.slot is None else row.slot
