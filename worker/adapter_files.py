"""Turn an adapter's files into validated weights the engine can run.

Adapters are PEFT's own save format: `adapter_config.json` + `adapter_model.safetensors`
(`worker.adapter_sources` finds them). Validation refuses, each with its own error code, anything
the engine would run wrongly or that could hurt the worker: pickle weights, non-LoRA adapters,
LoRA variants we do not compute (DoRA, trained biases, extra saved modules), tensors that do not
match the config or the base model, ranks above the pool's, NaN/inf, oversize files and adapters
trained for another base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.errors import (
    AdapterBaseMismatch,
    AdapterNonFinite,
    AdapterNotLora,
    AdapterRankTooHigh,
    AdapterShapeMismatch,
    AdapterTargetMissing,
    AdapterTensorsMismatch,
    AdapterTooLarge,
    AdapterUnsafeFormat,
    AdapterUnsupported,
)
from common.settings import BaseMismatchPolicy
from worker.engine.lora import AdapterWeights, LoraModuleWeights

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight")
#: Modules whose LoRA cannot change a sentence embedding (the pooler output is never used).
_IGNORED_MODULE_PREFIXES = ("pooler.",)


@dataclass(frozen=True)
class ModuleShape:
    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseModelInfo:
    """What validation needs to know of the base model."""

    model_id: str
    aliases: frozenset[str]
    modules: dict[str, ModuleShape]  # canonical LoRA-targetable linears


@dataclass(frozen=True)
class AdapterRules:
    max_rank: int
    max_file_bytes: int
    base_mismatch: BaseMismatchPolicy


def read_adapter(
    lora_id: str, path: Path, base: BaseModelInfo, rules: AdapterRules
) -> AdapterWeights:
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not weights_file.is_file():
        if (path / PICKLE_FILE).is_file():
            raise AdapterUnsafeFormat(
                f"adapter {lora_id!r} has pickle weights ({PICKLE_FILE}); only "
                f"{WEIGHTS_FILE} is loaded"
            )
        raise AdapterTensorsMismatch(f"adapter {lora_id!r} has no {WEIGHTS_FILE}")
    for file in (config_file, weights_file):
        if file.stat().st_size > rules.max_file_bytes:
            raise AdapterTooLarge(
                f"adapter {lora_id!r}: {file.name} is {file.stat().st_size} bytes, over the "
                f"limit of {rules.max_file_bytes}"
            )
    config_bytes, weight_bytes = config_file.read_bytes(), weights_file.read_bytes()
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise AdapterNotLora(f"adapter {lora_id!r}: {CONFIG_FILE} is not JSON: {exc}") from exc
    _check_config(lora_id, config, base, rules)
    tensors = _load_safetensors(lora_id, weight_bytes)
    digest = hashlib.sha256(config_bytes + b"\0" + weight_bytes).hexdigest()[:16]
    modules = _build_modules(lora_id, config, tensors, base, rules)
    return AdapterWeights(lora_id=lora_id, content_hash=digest, modules=modules)


def _load_safetensors(lora_id: str, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors: dict[str, torch.Tensor] = load(data)
    except (SafetensorError, ValueError) as exc:
        raise AdapterTensorsMismatch(
            f"adapter {lora_id!r}: unreadable {WEIGHTS_FILE}: {exc}"
        ) from exc
    return tensors


def _check_config(
    lora_id: str, config: dict[str, Any], base: BaseModelInfo, rules: AdapterRules
) -> None:
    if config.get("peft_type") != "LORA":
        raise AdapterNotLora(f"adapter {lora_id!r} is {config.get('peft_type')!r}, not LORA")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "lora_bias": bool(config.get("lora_bias")),
        # Activated LoRA applies only after its invocation tokens; we would apply it everywhere.
        "alora_invocation_tokens": bool(config.get("alora_invocation_tokens")),
    }
    if bad := [name for name, on in unsupported.items() if on]:
        raise AdapterUnsupported(f"adapter {lora_id!r} uses unsupported LoRA options: {bad}")
    trained_on = config.get("base_model_name_or_path")
    if trained_on and trained_on not in base.aliases:
        message = f"adapter {lora_id!r} was trained on {trained_on!r}, not on {base.model_id!r}"
        if rules.base_mismatch is BaseMismatchPolicy.REFUSE:
            raise AdapterBaseMismatch(message)
        log.warning("%s; serving it anyway (adapters.base_mismatch=warn)", message)
    targets = config.get("target_modules")
    if isinstance(targets, list):
        names = [*base.modules, *(p + "dense" for p in _IGNORED_MODULE_PREFIXES)]
        missing = [t for t in targets if not any(_suffix_match(t, n) for n in names)]
        if missing:
            raise AdapterTargetMissing(
                f"adapter {lora_id!r} targets modules the base model lacks: {missing}"
            )


def _suffix_match(pattern: str, name: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name's dotted suffix."""
    for key, value in patterns.items():
        if key == module or re.match(rf"(.*\.)?(?:{key})$", module):
            return value
    return default


def _canonical(module: str, base: BaseModelInfo) -> str | None:
    """Map a saved module path (`base_model.model.bert.encoder.layer.0...`) to ours."""
    if module in base.modules:
        return module
    for prefix in ("encoder.", *_IGNORED_MODULE_PREFIXES):
        at = module.find(prefix)
        if at == 0 or (at > 0 and module[at - 1] == "."):
            return module[at:]
    return None


def _split_keys(
    lora_id: str, tensors: dict[str, torch.Tensor], base: BaseModelInfo
) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY_RE.fullmatch(key)
        if match is None:
            raise AdapterTensorsMismatch(f"adapter {lora_id!r}: unexpected tensor {key!r}")
        module = _canonical(match["module"], base)
        if module is None or (module not in base.modules and not module.startswith("pooler.")):
            raise AdapterTargetMissing(
                f"adapter {lora_id!r}: tensor {key!r} targets a module the base model lacks"
            )
        if module.startswith(_IGNORED_MODULE_PREFIXES):
            continue
        pairs.setdefault(module, {})[match["ab"]] = tensor
    return pairs


def _build_modules(
    lora_id: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    base: BaseModelInfo,
    rules: AdapterRules,
) -> dict[str, LoraModuleWeights]:
    modules: dict[str, LoraModuleWeights] = {}
    for module, pair in _split_keys(lora_id, tensors, base).items():
        if set(pair) != {"A", "B"}:
            raise AdapterTensorsMismatch(
                f"adapter {lora_id!r}: module {module} has lora_{''.join(pair)} but not both"
            )
        a, b = pair["A"].float(), pair["B"].float()
        shape = base.modules[module]
        rank = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
        if a.shape != (rank, shape.in_features) or b.shape != (shape.out_features, rank):
            raise AdapterShapeMismatch(
                f"adapter {lora_id!r}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                f"expected A ({rank}, {shape.in_features}) and B ({shape.out_features}, {rank})"
            )
        if rank > rules.max_rank:
            raise AdapterRankTooHigh(
                f"adapter {lora_id!r} has rank {rank}, over the pool's maximum {rules.max_rank}"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterNonFinite(f"adapter {lora_id!r}: {module} has NaN or inf weights")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        modules[module] = LoraModuleWeights(a=a.contiguous(), b=(b * scale).contiguous())
    if not modules:
        raise AdapterTensorsMismatch(f"adapter {lora_id!r} has no LoRA tensors")
    return modules
