"""What `lmcache-ascend doctor` checks for vLLM, registered with the core's doctor through the
entry-point group `lmcache_ascend.doctor_checks` (pyproject.toml). Reads package metadata and files
only: the doctor imports neither vLLM nor vllm-ascend (which needs torch_npu)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Mapping

from lmcache_ascend.doctor.report import WARN, Check
from lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name import VLLM_ASCEND_MODULE

# vLLM plugins vllm-ascend's LMCacheAscendConnector name needs: vllm-ascend's registration of the
# name, and ours (pyproject.toml's vllm.general_plugins entry), which serves it with our connector.
VLLM_ASCEND_CONNECTOR_PLUGINS = ("ascend_kv_connector", "lmcache_ascend")


def registers_lmcache_ascend_connector() -> bool:
    """Whether the installed vllm-ascend has that name: the releases that register it (0.23 does) ship
    VLLM_ASCEND_MODULE. Read from its files, as importing vllm-ascend needs torch_npu."""
    try:
        importlib.metadata.version("vllm-ascend")
        spec = importlib.util.find_spec("vllm_ascend")
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return False
    roots = list(spec.submodule_search_locations or []) if spec else []
    *package, module = VLLM_ASCEND_MODULE.split(".")[1:]
    return any(Path(root, *package, f"{module}.py").is_file() for root in roots)


def vllm_ascend_connector_name(env: Mapping[str, str]) -> list[Check]:
    """vllm-ascend's "LMCacheAscendConnector" is ours only when vLLM loads both plugins it needs."""
    if not registers_lmcache_ascend_connector():
        return []
    allowed = env.get("VLLM_PLUGINS")  # unset: vLLM loads every plugin
    left_out = [p for p in VLLM_ASCEND_CONNECTOR_PLUGINS if allowed is not None and p not in allowed.split(",")]
    if not left_out:
        return []
    return [Check("package.vllm_ascend_connector", WARN, f"VLLM_PLUGINS={allowed!r} leaves out {', '.join(left_out)}: "
                  "vllm-ascend's LMCacheAscendConnector name would not reach lmcache-ascend's connector",
                  fix=f"add them: VLLM_PLUGINS={','.join(([allowed] if allowed else []) + left_out)} (or configure "
                  "the connector as LMCacheAscendConnectorV1Dynamic with its kv_connector_module_path)",
                  details={"VLLM_PLUGINS": allowed, "left_out": left_out})]
