"""Turn an adapter's files into the weights the engine runs: validated by `common.adapter_check`
(the rules the gateway also checks uploads by), then made tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from common.adapter_check import AdapterFiles, AdapterRules, check_adapter, read_files
from worker.engine.lora import AdapterWeights, LoraModuleWeights
from worker.engine.types import BaseModelInfo


def read_adapter(
    lora_id: str, path: Path, base: BaseModelInfo, rules: AdapterRules
) -> AdapterWeights:
    return build_adapter(lora_id, read_files(lora_id, path, rules), base, rules)


def build_adapter(
    lora_id: str, files: AdapterFiles, base: BaseModelInfo, rules: AdapterRules
) -> AdapterWeights:
    checked = check_adapter(lora_id, files, base, rules)
    modules = {
        name: LoraModuleWeights(a=torch.from_numpy(m.a), b=torch.from_numpy(m.b))
        for name, m in checked.modules.items()
    }
    return AdapterWeights(lora_id=lora_id, content_hash=checked.content_hash, modules=modules)
