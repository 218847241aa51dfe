"""LMCacheAscendConnectorV1Dynamic: LMCache under vLLM on Ascend NPUs and on vLLM's CPU platform.

    --kv-transfer-config '{"kv_connector": "LMCacheAscendConnectorV1Dynamic", "kv_role": "kv_both",
      "kv_connector_module_path": "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"}'

It is LMCache's own vLLM connector plus what vLLM-on-Ascend and vLLM-on-CPU need: the KV transfer
runs on lmcache_ascend's kernels (picked from the KV-cache tensors vLLM registers), LMCache's local
CPU pool comes from lmcache_ascend's native arena, and settings and the installed vLLM and LMCache
releases (supported_versions.py) are checked before LMCache starts.
Importing this module changes nothing; constructing the connector applies the patches
(lmcache_ascend.integration.vllm.patches), so import order does not matter.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from lmcache.integration.vllm.lmcache_connector_v1 import LMCacheConnectorV1Dynamic

from lmcache_ascend.integration.vllm.config import check_local_cpu_size, validate_extra_config
from lmcache_ascend.integration.vllm.lmcache_compat import (
    CONNECTOR_TAKES_KV_CACHE_CONFIG, REMOTE_HEALTH_FALLBACK_POLICY, process_independent_hash, vllm_integration_config)
from lmcache_ascend.integration.vllm.patches import apply_patches
from lmcache_ascend.integration.vllm.supported_versions import check_supported_versions

logger = logging.getLogger(__name__)

__all__ = ["LMCacheAscendConnectorV1Dynamic"]


class LMCacheAscendConnectorV1Dynamic(LMCacheConnectorV1Dynamic):
    """A vLLM KVConnectorBase_V1. Accepts vLLM 0.10's (vllm_config, role) and current vLLM's
    (vllm_config, role, kv_cache_config) constructor calls, over LMCache 0.5.x or 0.3.x."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Optional[Any] = None) -> None:
        # First: outside the supported releases the failure would come from deep inside LMCache or vLLM.
        check_supported_versions()
        _show_our_logs()
        ktc = vllm_config.kv_transfer_config
        extra = getattr(ktc, "kv_connector_extra_config", None) or {}
        validate_extra_config(extra)
        _check_pool_size(extra)
        _process_independent_hashing(ktc)
        _keep_local_tiers_when_remote_fails(ktc)
        apply_patches()
        if kv_cache_config is not None and CONNECTOR_TAKES_KV_CACHE_CONFIG:
            super().__init__(vllm_config, role, kv_cache_config)
        else:  # LMCache 0.3.x's connector takes (vllm_config, role) and never reads kv_cache_config
            super().__init__(vllm_config, role)

    def bind_connector_metadata(self, connector_metadata: Any) -> None:
        # vLLM >= 0.32 may run start_load_kv after the forward pass; reset the per-step layerwise
        # state here as vLLM's own LMCache wrapper does, or a layer wait would step last step's
        # finished retrievers. Remove once LMCache's engine resets it in bind_connector_metadata.
        super().bind_connector_metadata(connector_metadata)
        engine = self._lmcache_engine
        if hasattr(engine, "bind_connector_metadata"):
            engine.bind_connector_metadata(connector_metadata)
        else:
            if hasattr(engine, "current_layer"):
                engine.current_layer = 0
            if hasattr(engine, "layerwise_retrievers"):
                engine.layerwise_retrievers = []


def _show_our_logs() -> None:
    """lmcache_ascend's INFO lines (layout found, pool created) in the serving log, as LMCache's are."""
    root = logging.getLogger("lmcache_ascend")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lmcache-ascend] %(levelname)s %(asctime)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _process_independent_hashing(ktc: Any) -> None:
    """Chunk keys must hash the same in every process (vLLM's scheduler and worker, other engines
    sharing Redis). LMCache's default, Python's builtin hash, only does so with PYTHONHASHSEED set;
    without it a warm request finds nothing. Use a vLLM hash LMCache can use then (sha256_cbor on
    LMCache 0.5), unless the user chose; where the pair has none, say how to fix it."""
    import os

    extra = ktc.kv_connector_extra_config
    key = "lmcache.pre_caching_hash_algorithm"
    if key in (extra or {}) or os.environ.get("PYTHONHASHSEED") is not None:
        return
    if _lmcache_config().pre_caching_hash_algorithm != "builtin":
        return
    algorithm = process_independent_hash()
    if algorithm is None:
        logger.warning("lmcache-ascend: PYTHONHASHSEED is not set and this LMCache and vLLM pair has no chunk hash "
                       "that is the same in every process, so a restarted engine or another engine sharing the "
                       "store finds nothing: set PYTHONHASHSEED=0 for every vLLM process")
        return
    if extra is None:
        ktc.kv_connector_extra_config = extra = {}
    extra[key] = algorithm
    logger.info("lmcache-ascend: PYTHONHASHSEED is not set, so chunk keys use %s (set %s to choose)", algorithm, key)


def _keep_local_tiers_when_remote_fails(ktc: Any) -> None:
    """With a remote store, LMCache's default health policy ("recompute") turns off every tier,
    local CPU included, for minutes after one failed check. Keep the local tiers serving instead
    (fallback_policy: local_cpu), unless the user chose a policy. LMCache 0.3.x has no such policy."""
    import json

    if not REMOTE_HEALTH_FALLBACK_POLICY:
        return
    config = _lmcache_config()
    extra = ktc.kv_connector_extra_config or {}
    if not (extra.get("lmcache.remote_url") or config.remote_url):
        return
    lmc_extra = extra.get("lmcache.extra_config", config.extra_config) or {}
    if isinstance(lmc_extra, str):
        lmc_extra = json.loads(lmc_extra)
    if "fallback_policy" in lmc_extra:
        return
    if ktc.kv_connector_extra_config is None:
        ktc.kv_connector_extra_config = extra
    extra["lmcache.extra_config"] = {**lmc_extra, "fallback_policy": "local_cpu"}


def _check_pool_size(extra: dict) -> None:
    if "lmcache.max_local_cpu_size" in extra:
        check_local_cpu_size(extra["lmcache.max_local_cpu_size"], "kv_connector_extra_config lmcache.max_local_cpu_size")
    else:
        check_local_cpu_size(_lmcache_config().max_local_cpu_size, "LMCache max_local_cpu_size")


def _lmcache_config() -> Any:
    return vllm_integration_config()
