"""BERT-family encoder (BERT, RoBERTa, XLM-R: MiniLM, bge-*, bge-m3) over packed batches.

Our own forward instead of the transformers module, for three reasons: the linears run on real
tokens only (no padding FLOPs), query/key/value are one fused GEMM, and every LoRA target linear
has a hook that applies the batch's adapters per segment. Weights come from the transformers model
(so every checkpoint naming quirk stays its problem); parity with it is tested.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.lora import LoraBatch, LoraGroup
from worker.engine.packing import AttentionBucket, PackedBatch
from worker.engine.types import ModuleShape, Pause, no_pause


def _find_varlen_attn() -> Callable[..., Any] | None:
    """Flash attention over packed rows (CUDA, fp16/bf16): no padding even in attention. Older
    torch lacks it; then attention pads per batch and everything else stays packed."""
    try:
        from torch.nn.attention import varlen
    except ImportError:
        return None
    return varlen.varlen_attn


VARLEN_ATTN = _find_varlen_attn()

#: LoRA target modules of one layer, named as in transformers' BertLayer (and so in PEFT keys).
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
ATTN_OUT = "attention.output.dense"
INTERMEDIATE = "intermediate.dense"
OUTPUT = "output.dense"


class LayerGroup(IntEnum):
    """A layer's LoRA groups (linears that read the same input), in the order `lora_groups`
    lists them: layer i's group g is pool group `len(LayerGroup) * i + g`."""

    QKV = 0
    ATTN_OUT = 1
    INTERMEDIATE = 2
    OUTPUT = 3


_SUPPORTED = ("bert", "roberta", "xlm-roberta")


class _Layer(nn.Module):
    def __init__(self, hf_layer: Any, n_heads: int, act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        att = hf_layer.attention
        q, k, v = att.self.query, att.self.key, att.self.value
        self.qkv = nn.Linear(q.in_features, 3 * q.out_features)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.attn_out = att.output.dense
        self.attn_norm = att.output.LayerNorm
        self.inter = hf_layer.intermediate.dense
        self.out = hf_layer.output.dense
        self.out_norm = hf_layer.output.LayerNorm
        self.n_heads = n_heads
        self.act = act
        self.varlen = False

    def forward(
        self,
        x: torch.Tensor,
        batch: PackedBatch,
        lora: LoraBatch | None,
        first_group: int,
        pause: Pause,
    ) -> torch.Tensor:
        qkv = self.qkv(x)
        if lora is not None:
            lora.add(first_group + LayerGroup.QKV, x, qkv)
        pause()
        ctx = self._attend(qkv, batch)
        pause()
        h = self.attn_out(ctx)
        if lora is not None:
            lora.add(first_group + LayerGroup.ATTN_OUT, ctx, h)
        x = self.attn_norm(h + x)
        pause()
        inter = self.inter(x)
        if lora is not None:
            lora.add(first_group + LayerGroup.INTERMEDIATE, x, inter)
        inter = self.act(inter)
        pause()
        h = self.out(inter)
        if lora is not None:
            lora.add(first_group + LayerGroup.OUTPUT, inter, h)
        x = self.out_norm(h + x)
        pause()
        return x

    def _attend(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        d = qkv.shape[1] // 3
        if self.varlen:
            assert VARLEN_ATTN is not None
            q, k, v = qkv.view(-1, 3, self.n_heads, d // self.n_heads).unbind(1)
            cu, n = batch.cu_seqlens, batch.max_len
            out: torch.Tensor = VARLEN_ATTN(q, k, v, cu, cu, n, n)
            return out.reshape(-1, d)
        if len(batch.buckets) == 1 and batch.buckets[0].tokens is None:
            return self._attend_bucket(qkv, batch.buckets[0])
        ctx = qkv.new_empty(qkv.shape[0], d)
        for bucket in batch.buckets:
            assert bucket.tokens is not None
            part = self._attend_bucket(qkv.index_select(0, bucket.tokens), bucket)
            ctx.index_copy_(0, bucket.tokens, part)
        return ctx

    def _attend_bucket(self, qkv: torch.Tensor, bucket: AttentionBucket) -> torch.Tensor:
        """Attention over one bucket's tokens (row by row), padded to its longest row."""
        width = qkv.shape[1]
        d = width // 3
        grid = qkv
        if bucket.grid_index is not None:
            grid = qkv.new_zeros(bucket.rows * bucket.max_len, width)
            grid.index_copy_(0, bucket.grid_index, qkv)
        shape = (bucket.rows, bucket.max_len, 3, self.n_heads, d // self.n_heads)
        q, k, v = grid.view(shape).permute(2, 0, 3, 1, 4)
        mask = None if bucket.key_mask is None else bucket.key_mask[:, None, None, :]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ctx = ctx.transpose(1, 2).reshape(bucket.rows * bucket.max_len, d)
        return ctx if bucket.grid_index is None else ctx.index_select(0, bucket.grid_index)


class PackedEncoder(nn.Module):
    """Token embeddings → layers → last hidden state of every real token, packed."""

    def __init__(self, hf_model: Any) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        cfg = hf_model.config
        if cfg.model_type not in _SUPPORTED:
            raise ValueError(f"unsupported model_type {cfg.model_type!r}; supported: {_SUPPORTED}")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        emb = hf_model.embeddings
        self.word = emb.word_embeddings
        self.position = emb.position_embeddings
        self.token_type = emb.token_type_embeddings
        self.emb_norm = emb.LayerNorm
        self.position_offset = cfg.pad_token_id + 1 if cfg.model_type != "bert" else 0
        act = ACT2FN[cfg.hidden_act]
        self.layers = nn.ModuleList(
            _Layer(layer, cfg.num_attention_heads, act) for layer in hf_model.encoder.layer
        )
        self.hidden_size: int = cfg.hidden_size

    def use_varlen_attention(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Varlen flash attention where the kernel exists (CUDA, half precision)."""
        on = VARLEN_ATTN is not None and device.type == "cuda" and dtype != torch.float32
        for layer in self.layers:
            layer.varlen = on  # type: ignore[assignment]
        return on

    def lora_groups(self) -> list[LoraGroup]:
        """Per layer, one group per `LayerGroup`, in its order: the indices `_Layer.forward`
        hands `lora.add`."""
        groups = []
        for i in range(len(self.layers)):
            layer: _Layer = self.layers[i]  # type: ignore[assignment]
            p = f"encoder.layer.{i}."
            d, ff = layer.attn_out.out_features, layer.inter.out_features
            of_layer = {
                LayerGroup.QKV: LoraGroup(tuple(p + m for m in QKV), d, (d, d, d)),
                LayerGroup.ATTN_OUT: LoraGroup((p + ATTN_OUT,), d, (d,)),
                LayerGroup.INTERMEDIATE: LoraGroup((p + INTERMEDIATE,), d, (ff,)),
                LayerGroup.OUTPUT: LoraGroup((p + OUTPUT,), ff, (d,)),
            }
            groups += [of_layer[g] for g in LayerGroup]
        return groups

    def target_modules(self) -> dict[str, ModuleShape]:
        """The linears an adapter may target, by the canonical names adapter files are checked
        against; derived from `lora_groups`, so validation accepts exactly what the pool holds."""
        return {
            name: ModuleShape(group.in_features, out)
            for group in self.lora_groups()
            for name, out in zip(group.modules, group.out_features, strict=True)
        }

    def forward(
        self, batch: PackedBatch, lora: LoraBatch | None = None, pause: Pause = no_pause
    ) -> torch.Tensor:
        x = (
            self.word(batch.input_ids)
            + self.position(batch.position_ids)
            + self.token_type.weight[0]
        )
        x = self.emb_norm(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, lora, len(LayerGroup) * i, pause)
        return x  # type: ignore[no-any-return]
