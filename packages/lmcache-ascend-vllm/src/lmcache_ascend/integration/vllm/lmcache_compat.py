"""What differs between the LMCache generations we support, as far as the vLLM connector sees it.

Generation 5 = LMCache 0.5.x, 3 = LMCache 0.3.x (the core's `lmcache_ascend.lmcache_compat.GENERATION`,
which also serves memory objects and the KV layout recogniser). Used by the connector module,
config.py, kv_connectors.py and patches/; checked by tests/contract.

- 5: LMCacheConnectorV1Dynamic(vllm_config, role, kv_cache_config=None); 3: (vllm_config, role):
  it predates vLLM's kv_cache_config argument and never reads it.
- 5: one failed health check of a remote store turns every tier off unless extra_config
  fallback_policy keeps the local ones; 3: no such monitor (a failing remote store only misses).
- Chunk keys equal in every process (pre_caching_hash_algorithm): 5 looks vLLM's sha256_cbor up
  by name; 3 imports vLLM's sha256 and sha256_cbor_64bit together and silently uses Python's
  hash() when either is missing, as in vLLM 0.9 (no sha256_cbor_64bit) and >= 0.10.2 (renamed).
- Setting names: 5 and 0.3.7: lmcache.v1.config._CONFIG_DEFINITIONS; 0.3.3: the fields of the
  LMCacheEngineConfig dataclass.
- 5: vLLM's adapter builds its GPU connector through lmcache.v1.gpu_connector.CreateGPUConnector;
  3: lmcache.integration.vllm.vllm_v1_adapter builds a CUDA one inline (no factory to extend).
- The vLLM integration's config: lmcache.integration.vllm.utils.lmcache_get_or_create_config
  (5, 0.3.7); lmcache_get_config (0.3.3).

GPU-connector interface (kv_connectors.py). Same in both generations: the abstract methods to_gpu /
from_gpu (memory_obj, start, end, **kw), batched_from_gpu (memory_objs, starts, ends, **kw),
batched_to_gpu, get_shape(num_tokens); kwargs kvcaches + slot_mapping (+ sync for layerwise); the
layerwise generators (retrieve yields num_layers + 2 times and is fed one layer's memory objects per
send, store yields num_layers + 1 times); the MemoryFormat names KV_2LTD, KV_T2D, KV_MLA_FMT;
LMCache's engine accepts a layerwise connector only if it is an instance of
VLLMPagedMemLayerwiseGPUConnector. Different:
- 5: classes in lmcache.v1.gpu_connector.gpu_connectors (a package); 3: lmcache.v1.gpu_connector.
- 5: LMCache detects the engine's KV layout and its base class makes HND views contiguous; 3:
  neither (the core's discover_kv_layout covers both).
- 5: batched_to_gpu's parameters have defaults (layerwise connectors get starts, ends in them);
  vLLM's adapter passes vllm_cached_tokens (already computed by vLLM, left alone on retrieve).
  3: no defaults, no vllm_cached_tokens (its adapter masks whole chunks instead).
- 5: metadata is lmcache.v1.metadata.LMCacheMetadata; 3: lmcache.config.LMCacheEngineMetadata
  (no chunk_size field). Both: kv_shape = (layers, 2 or 1 for MLA, chunk_size, kv heads, head_size).
"""
from __future__ import annotations

import importlib
from typing import Any

from lmcache_ascend.lmcache_compat import GENERATION

CONNECTOR_TAKES_KV_CACHE_CONFIG = GENERATION == 5
REMOTE_HEALTH_FALLBACK_POLICY = GENERATION == 5
HAS_GPU_CONNECTOR_FACTORY = GENERATION == 5


def process_independent_hash() -> str | None:
    """The pre_caching_hash_algorithm that gives every process the same chunk keys; None when this
    LMCache and vLLM pair has none (then only PYTHONHASHSEED does)."""
    if GENERATION == 5:
        return "sha256_cbor"
    import vllm.utils

    if hasattr(vllm.utils, "sha256") and hasattr(vllm.utils, "sha256_cbor_64bit"):
        return "sha256_cbor_64bit"
    return None


def vllm_integration_config() -> Any:
    """LMCache's config as its vLLM integration reads it."""
    from lmcache.integration.vllm import utils

    getter = getattr(utils, "lmcache_get_or_create_config", None) or utils.lmcache_get_config
    return getter()


def lmcache_setting_names() -> set[str]:
    """Every LMCache setting name (what kv_connector_extra_config may set as 'lmcache.<name>')."""
    import dataclasses

    from lmcache.v1 import config

    table = getattr(config, "_CONFIG_DEFINITIONS", None)
    if table is not None:
        return set(table)
    return {field.name for field in dataclasses.fields(config.LMCacheEngineConfig)}


def gpu_connector_bases() -> tuple[type, type]:
    """(GPUConnectorInterface, VLLMPagedMemLayerwiseGPUConnector) of the installed LMCache."""
    module = importlib.import_module("lmcache.v1.gpu_connector.gpu_connectors" if GENERATION == 5
                                     else "lmcache.v1.gpu_connector")  # 3: one module
    return module.GPUConnectorInterface, module.VLLMPagedMemLayerwiseGPUConnector
