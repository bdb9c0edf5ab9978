"""An adapter's files checked against a base model: the rules the worker loads adapters by and
the gateway checks uploads by, so an upload is refused with exactly the code a job would fail with.

Adapters are PEFT's own save format: `adapter_config.json` + `adapter_model.safetensors`.
Validation refuses, each with its own error code, anything the engine would run wrongly or that
could hurt the worker: pickle weights, malformed configs (`common.adapter_config`), non-LoRA
adapters, LoRA variants we do not compute (DoRA, trained biases, extra saved modules), tensors
that do not match the config or the base model, ranks above the pool's, NaN/inf weights or
scales, oversize files and adapters trained for another base model.

Reading (`read_files`: bounded reads and a content hash) is apart from validating
(`check_adapter`), so the worker's adapter cache can remember a refusal by what was refused. No
torch here (`common.safetensors_read`): the result is float32 numpy arrays, which the worker
turns into tensors.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common import safetensors_read
from common.adapter_config import (
    MAX_CONFIG_BYTES,
    LoraConfigFile,
    Patterns,
    compile_patterns,
    parse_config,
    shown,
)
from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.errors import (
    AdapterBaseMismatch,
    AdapterNonFinite,
    AdapterNotFound,
    AdapterRankTooHigh,
    AdapterScaleTooLarge,
    AdapterShapeMismatch,
    AdapterTargetMissing,
    AdapterTensorsMismatch,
    AdapterTooLarge,
    AdapterUnsafeFormat,
)
from common.safetensors_read import Float32Array
from common.settings import BaseMismatchPolicy

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight")
#: Where PEFT puts the base model's modules in the names of saved tensors.
_PEFT_PREFIX = "base_model.model."
#: Modules whose LoRA cannot change a sentence embedding (the pooler output is never used).
_IGNORED_MODULE_PREFIXES = ("pooler.",)
#: |lora_alpha / r| above this is a unit mistake or an attack, not a training recipe (common
#: ones stay below 100); the delta would swamp the base weights, or overflow half precision.
MAX_SCALE = 1000.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ModuleShape(Protocol):
    @property
    def in_features(self) -> int: ...

    @property
    def out_features(self) -> int: ...


class BaseModelInfo(Protocol):
    """What validation needs to know of the base model: the worker's engine describes its loaded
    model (`worker.engine.types.BaseModelInfo`), the gateway reads the model's config
    (`common.model_files.base_model_info`)."""

    @property
    def model_id(self) -> str: ...

    @property
    def aliases(self) -> frozenset[str]: ...

    @property
    def modules(self) -> Mapping[str, ModuleShape]: ...


@dataclass(frozen=True)
class AdapterRules:
    max_rank: int
    max_file_bytes: int
    base_mismatch: BaseMismatchPolicy


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter's bytes, read once, so what is validated is exactly what was hashed."""

    config: bytes
    weights: bytes
    content_hash: str


@dataclass(frozen=True)
class CheckedModule:
    """A module's `A` and its `B` times the scale (`lora_alpha / r`): what the engine runs."""

    a: Float32Array
    b: Float32Array


@dataclass(frozen=True)
class CheckedAdapter:
    config: LoraConfigFile
    content_hash: str
    modules: dict[str, CheckedModule]

    @property
    def rank(self) -> int:
        return max(int(m.a.shape[0]) for m in self.modules.values())


def content_hash(config: bytes, weights: bytes) -> str:
    """An adapter's identity: what results echo as `adapter_hash`, and a revision's id."""
    return hashlib.sha256(config + b"\0" + weights).hexdigest()[:16]


def read_files(lora_id: str, path: Path, rules: AdapterRules) -> AdapterFiles:
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file():
        raise AdapterNotFound(f"adapter {lora_id!r} has no {CONFIG_FILE}")
    if not weights_file.is_file():
        if (path / PICKLE_FILE).is_file():
            raise AdapterUnsafeFormat(
                f"adapter {lora_id!r} has pickle weights ({PICKLE_FILE}); only "
                f"{WEIGHTS_FILE} is loaded"
            )
        raise AdapterTensorsMismatch(f"adapter {lora_id!r} has no {WEIGHTS_FILE}")
    config = _read_bounded(lora_id, config_file, config_limit(rules))
    weights = _read_bounded(lora_id, weights_file, rules.max_file_bytes)
    return AdapterFiles(config, weights, content_hash(config, weights))


def config_limit(rules: AdapterRules) -> int:
    return min(rules.max_file_bytes, MAX_CONFIG_BYTES)


def too_large(lora_id: str, name: str, size: int, limit: int) -> AdapterTooLarge:
    return AdapterTooLarge(
        f"adapter {lora_id!r}: {name} is {size} bytes, over the limit of {limit}"
    )


def _read_bounded(lora_id: str, file: Path, limit: int) -> bytes:
    """Never more than `limit` bytes in memory, even if the file grows while it is read."""
    with file.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise too_large(lora_id, file.name, max(size, len(data)), limit)
    return data


def check_adapter(
    lora_id: str, files: AdapterFiles, base: BaseModelInfo, rules: AdapterRules
) -> CheckedAdapter:
    config = parse_config(lora_id, files.config)
    ranks = compile_patterns(lora_id, "rank_pattern", config.rank_pattern)
    alphas = compile_patterns(lora_id, "alpha_pattern", config.alpha_pattern)
    trained_on = config.base_model_name_or_path
    named_base = names_base(trained_on, base)
    if named_base is False and rules.base_mismatch is BaseMismatchPolicy.REFUSE:
        raise AdapterBaseMismatch(
            f"adapter {lora_id!r} was trained on {shown(trained_on)}, which is not a known name "
            f"of {base.model_id!r} (adapters.base_mismatch=refuse)"
        )
    try:
        _check_targets(lora_id, config, base)
        tensors = _load_safetensors(lora_id, files.weights)
        modules = _build_modules(lora_id, config, tensors, base, rules, ranks, alphas)
    except (AdapterShapeMismatch, AdapterTargetMissing) as exc:
        if named_base is False:  # a different name, and the shapes agree: another model
            raise AdapterBaseMismatch(
                f"{exc.message} (it names its base {shown(trained_on)}, not a known name of "
                f"{base.model_id!r})"
            ) from exc
        raise
    if named_base is False:
        log.warning(
            "adapter %r names its base %s, not a known name of %r; its modules fit, so it is "
            "served (adapters.base_mismatch=warn)",
            lora_id,
            shown(trained_on),
            base.model_id,
        )
    return CheckedAdapter(config, files.content_hash, modules)


def names_base(trained_on: str | None, base: BaseModelInfo) -> bool | None:
    """Whether the adapter's `base_model_name_or_path` names the base model; None if it is
    silent. PEFT writes whatever path the trainer loaded from, so spellings of one location
    count as the same name (`name_keys`); any other name is for the module shapes to judge."""
    if not trained_on:
        return None
    if trained_on in base.aliases:
        return True
    known = {key for alias in base.aliases for key in name_keys(alias)}
    return not known.isdisjoint(name_keys(trained_on))


def name_keys(name: str) -> set[str]:
    """Forms of a model's name or path that identify the same model anywhere: a hub id in any
    case, the hub id of a Hugging Face cache snapshot (`.../models--org--name/snapshots/<rev>`),
    and a model inside an installed package, wherever its site-packages is."""
    text = name.strip().replace("\\", "/").rstrip("/")
    parts = [part for part in text.split("/") if part]
    keys = {text.lower()}
    for i, part in enumerate(parts):
        if part.startswith("models--"):
            keys.add(part.removeprefix("models--").replace("--", "/").lower())
        if part in ("site-packages", "dist-packages") and i + 1 < len(parts):
            keys.add("package:" + "/".join(parts[i + 1 :]))
    return keys


def _check_targets(lora_id: str, config: LoraConfigFile, base: BaseModelInfo) -> None:
    """A `target_modules` list names module suffixes; a string (a regex in PEFT) is not
    evaluated: the saved tensors say which modules the adapter really has."""
    if not isinstance(config.target_modules, list):
        return
    names = [*base.modules, *(p + "dense" for p in _IGNORED_MODULE_PREFIXES)]
    missing = [t for t in config.target_modules if not any(_suffix_match(t, n) for n in names)]
    if missing:
        raise AdapterTargetMissing(
            f"adapter {lora_id!r} targets modules the base model lacks: {shown(missing)}"
        )


def _suffix_match(pattern: str, name: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _load_safetensors(lora_id: str, data: bytes) -> dict[str, Float32Array]:
    try:
        return safetensors_read.load(data)
    except safetensors_read.SafetensorsError as exc:
        raise AdapterTensorsMismatch(
            f"adapter {lora_id!r}: unreadable {WEIGHTS_FILE}: {exc}"
        ) from exc


def _canonical(module: str, base: BaseModelInfo) -> str | None:
    """Map a saved module path (`base_model.model.bert.encoder.layer.0...`) to ours."""
    if module in base.modules:
        return module
    for prefix in ("encoder.", *_IGNORED_MODULE_PREFIXES):
        at = module.find(prefix)
        if at == 0 or (at > 0 and module[at - 1] == "."):
            return module[at:]
    return None


@dataclass
class _SavedModule:
    #: The module's name in the model PEFT wrapped: what its rank/alpha patterns matched.
    peft_name: str
    tensors: dict[str, Float32Array]


def _split_keys(
    lora_id: str, tensors: dict[str, Float32Array], base: BaseModelInfo
) -> dict[str, _SavedModule]:
    saved: dict[str, _SavedModule] = {}
    for key, tensor in tensors.items():
        match = _KEY_RE.fullmatch(key)
        if match is None:
            raise AdapterTensorsMismatch(f"adapter {lora_id!r}: unexpected tensor {shown(key)}")
        module = _canonical(match["module"], base)
        if module is None or (module not in base.modules and not module.startswith("pooler.")):
            raise AdapterTargetMissing(
                f"adapter {lora_id!r}: tensor {shown(key)} targets a module the base model lacks"
            )
        if module.startswith(_IGNORED_MODULE_PREFIXES):
            continue
        peft_name = match["module"].removeprefix(_PEFT_PREFIX)
        saved.setdefault(module, _SavedModule(peft_name, {})).tensors[match["ab"]] = tensor
    return saved


def _build_modules(
    lora_id: str,
    config: LoraConfigFile,
    tensors: dict[str, Float32Array],
    base: BaseModelInfo,
    rules: AdapterRules,
    ranks: Patterns[int],
    alphas: Patterns[float],
) -> dict[str, CheckedModule]:
    modules: dict[str, CheckedModule] = {}
    for module, saved in _split_keys(lora_id, tensors, base).items():
        pair = saved.tensors
        if set(pair) != {"A", "B"}:
            raise AdapterTensorsMismatch(
                f"adapter {lora_id!r}: module {module} has lora_{''.join(pair)} but not both"
            )
        a, b = pair["A"], pair["B"]
        shape = base.modules[module]
        rank = ranks.value(saved.peft_name, config.r)
        if a.shape != (rank, shape.in_features) or b.shape != (shape.out_features, rank):
            raise AdapterShapeMismatch(
                f"adapter {lora_id!r}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                f"expected A ({rank}, {shape.in_features}) and B ({shape.out_features}, {rank})"
            )
        if rank > rules.max_rank:
            raise AdapterRankTooHigh(
                f"adapter {lora_id!r} has rank {rank}, over the pool's maximum {rules.max_rank}"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterNonFinite(f"adapter {lora_id!r}: {module} has NaN or inf weights")
        alpha = alphas.value(saved.peft_name, config.lora_alpha)
        scale = alpha / (math.sqrt(rank) if config.use_rslora else rank)
        modules[module] = CheckedModule(a, _scaled(lora_id, module, b, scale))
    if not modules:
        raise AdapterTensorsMismatch(f"adapter {lora_id!r} has no LoRA tensors")
    return modules


def _scaled(lora_id: str, module: str, b: Float32Array, scale: float) -> Float32Array:
    """`B * scale`, the weights the engine runs; checked after scaling, since a finite B with
    an alpha of 1e45 (or NaN) is not a finite adapter."""
    if not (math.isfinite(scale) and abs(scale) <= _FLOAT32_MAX):
        raise AdapterNonFinite(
            f"adapter {lora_id!r}: {module} has the scale {scale!r} (lora_alpha / r), which is "
            "not a finite float32"
        )
    if abs(scale) > MAX_SCALE:
        raise AdapterScaleTooLarge(
            f"adapter {lora_id!r}: {module} has the scale {scale:g} (lora_alpha / r); at most "
            f"{MAX_SCALE:g} is served"
        )
    with np.errstate(over="ignore"):
        scaled = b * np.float32(scale)
    if not np.isfinite(scaled).all():
        raise AdapterNonFinite(f"adapter {lora_id!r}: {module} has inf weights once scaled")
    return scaled
