"""`adapter_config.json` as a strict typed model, and PEFT's rank/alpha pattern lookup without a
regex engine.

The config is untrusted input: any shape we do not expect (a list, a string where a number goes,
`r` of 0, a pattern that is a list) is refused as `ADAPTER_CONFIG_INVALID` with a plain message
before any arithmetic could fail on it as a `TypeError` (which would surface as a 500).

PEFT resolves `rank_pattern` / `alpha_pattern` keys with `re.match(rf"(.*\\.)?({key})$", name)`
(`peft.utils.other.get_pattern_key`). Evaluating an adapter's keys that way lets one adapter
freeze the worker: Python's `re` holds the GIL while it backtracks. The keys PEFT itself writes
are module names, dotted suffixes of them, and `.*\\.` + `re.escape(name)` (its weight
conversion); in that subset a key has no quantifier, so it matches a fixed-length tail of the
name, which `PatternKey.matches` checks by slicing, with PEFT's exact semantics (an unescaped
`.` matches any one character). Keys outside the subset are refused (`ADAPTER_UNSUPPORTED`);
this module never hands adapter data to `re`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.adapters import CONFIG_FILE
from common.errors import AdapterConfigInvalid, AdapterNotLora, AdapterUnsupported

#: PEFT configs are a few KB; EVA's per-module patterns for a large model stay far below this.
MAX_CONFIG_BYTES = 1024 * 1024
#: Bounds pattern lookup (keys x modules, a fraction of a second at worst). PEFT writes at most
#: one key per module, and an encoder has 6 LoRA-able linears a layer (288 for 48 layers).
MAX_PATTERN_KEYS = 512
#: The prefix PEFT's weight conversion writes: rf".*\.{re.escape(name)}".
_AFTER_A_DOT = ".*\\."
#: Characters a module name is made of; `.` is handled apart (a wildcard unless escaped).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_SHOWN_CHARS = 200
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}

Rank = Annotated[int, Field(ge=1)]


class LoraConfigFile(BaseModel):
    """The fields of PEFT's `LoraConfig` that decide how the engine runs the adapter; the many
    others PEFT writes (task_type, inference_mode, ...) are allowed and ignored."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    peft_type: Literal["LORA"]
    r: Rank
    lora_alpha: float
    target_modules: list[str] | str | None = None
    rank_pattern: dict[str, Rank] | None = None
    alpha_pattern: dict[str, float] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    # Activated LoRA applies only after its invocation tokens; we would apply it everywhere.
    alora_invocation_tokens: list[int] | None = None
    base_model_name_or_path: str | None = None


def shown(value: object) -> str:
    """A config value quoted in a message, cut short: messages reach clients and logs."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse_config(lora_id: str, data: bytes) -> LoraConfigFile:
    try:
        raw = json.loads(data)
    except RecursionError:
        raise AdapterConfigInvalid(f"adapter {lora_id!r}: {CONFIG_FILE} nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise AdapterConfigInvalid(
            f"adapter {lora_id!r}: {CONFIG_FILE} is not JSON{where}"
        ) from None
    if not isinstance(raw, dict):
        kind = _JSON_KINDS.get(type(raw), "value")
        raise AdapterConfigInvalid(
            f"adapter {lora_id!r}: {CONFIG_FILE} holds a JSON {kind}, not an object"
        )
    if raw.get("peft_type") != "LORA":
        raise AdapterNotLora(f"adapter {lora_id!r} is {shown(raw.get('peft_type'))}, not LORA")
    try:
        config = LoraConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise AdapterConfigInvalid(
            f"adapter {lora_id!r}: {CONFIG_FILE} has invalid fields: {_describe(exc)}"
        ) from None
    _check_supported(lora_id, config)
    return config


def _describe(exc: ValidationError) -> str:
    """The first problem of up to three fields, without the offending values."""
    first: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = str(error["loc"][0]) if error["loc"] else "config"
        first.setdefault(field, error["msg"])
    return "; ".join(f"{field}: {msg}" for field, msg in list(first.items())[:3])


def _check_supported(lora_id: str, config: LoraConfigFile) -> None:
    unsupported = {
        "use_dora": config.use_dora,
        "bias": config.bias != "none",
        "modules_to_save": bool(config.modules_to_save),
        "fan_in_fan_out": config.fan_in_fan_out,
        "lora_bias": config.lora_bias,
        "alora_invocation_tokens": bool(config.alora_invocation_tokens),
    }
    if bad := [name for name, on in unsupported.items() if on]:
        raise AdapterUnsupported(f"adapter {lora_id!r} uses unsupported LoRA options: {bad}")


@dataclass(frozen=True)
class PatternKey:
    """One `rank_pattern` / `alpha_pattern` key of the fixed-length subset."""

    key: str
    #: The tail of a module name it matches; `.` stands for any character at a `wild` position.
    tail: str
    #: Start and end of each run of `tail` that must be equal in the name (between wildcards).
    literal_runs: tuple[tuple[int, int], ...]
    #: Written as `.*\.<name>`: a dot must precede the tail (the whole name does not match).
    after_a_dot: bool

    def matches(self, name: str) -> bool:
        """`re.match(rf"(.*\\.)?({self.key})$", name)`, for a key of the subset."""
        start = len(name) - len(self.tail)
        if start < 0 or (start == 0 and self.after_a_dot):
            return False
        if start > 0 and name[start - 1] != ".":
            return False
        return all(name[start + a : start + b] == self.tail[a:b] for a, b in self.literal_runs)


def parse_key(key: str) -> PatternKey | None:
    """The key as a `PatternKey`, or None if it uses regex syntax beyond the subset."""
    after_a_dot = key.startswith(_AFTER_A_DOT)
    body = key[len(_AFTER_A_DOT) :] if after_a_dot else key
    chars: list[str] = []
    wild: list[int] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and body[i + 1 : i + 2] in (".", "-"):
            chars.append(body[i + 1])
            i += 2
            continue
        if char == ".":
            wild.append(len(chars))
        elif char not in _NAME_CHARS:
            return None
        chars.append(char)
        i += 1
    if not chars:
        return None
    bounds = [-1, *wild, len(chars)]
    runs = tuple((a + 1, b) for a, b in pairwise(bounds) if b > a + 1)
    return PatternKey(key, "".join(chars), runs, after_a_dot)


V = TypeVar("V", int, float)


@dataclass(frozen=True)
class Patterns(Generic[V]):
    """A pattern dict with its keys parsed, in the config's order (PEFT takes the first match)."""

    entries: tuple[tuple[PatternKey, V], ...]

    def value(self, name: str, default: V) -> V:
        for key, value in self.entries:
            if key.matches(name):
                return value
        return default


def compile_patterns(lora_id: str, field: str, patterns: dict[str, V] | None) -> Patterns[V]:
    patterns = patterns or {}
    if len(patterns) > MAX_PATTERN_KEYS:
        raise AdapterConfigInvalid(
            f"adapter {lora_id!r}: {field} has {len(patterns)} keys, over {MAX_PATTERN_KEYS}"
        )
    entries: list[tuple[PatternKey, V]] = []
    for key, value in patterns.items():
        parsed = parse_key(key)
        if parsed is None:
            raise AdapterUnsupported(
                f"adapter {lora_id!r}: {field} key {shown(key)} is a regular expression; only "
                "module names, dotted suffixes of them and '.*\\.<name>' are supported"
            )
        entries.append((parsed, value))
    return Patterns(tuple(entries))
