"""Build LMCache 0.3.x's engine with lmcache-ascend's connectors on vLLM's CPU platform and on Ascend.

Why: LMCache 0.3.7's vLLM adapter (`lmcache.integration.vllm.vllm_v1_adapter._init_lmcache_engine`)
  is CUDA-only and has no factory to extend (0.5's CreateGPUConnector, see
  patch_gpu_connector_factory): it picks the device with torch.cuda (`rank % device_count()`, a
  division by zero off CUDA) and constructs LMCache's CUDA connectors inline.
How: wrap `_init_lmcache_engine` in the adapter module (its only caller looks it up there at call
  time). On a vLLM platform other than cpu / npu the original runs; on cpu / npu the wrapper builds
  the same engine metadata from vLLM's config, with PagedKVConnector / PagedKVLayerwiseConnector on
  the platform's device, through LMCache's own LMCacheEngineBuilder.
  LMCache 0.3.3 sets its engine up elsewhere and its local CPU backend creates a CUDA stream, so
  there the wrapper refuses cpu / npu with the fix (LMCache 0.3.7) instead of failing inside LMCache.
Versions: LMCache 0.3.7 (0.3.3 refused as above); 0.5.x has the factory and is left alone.
Remove when: LMCache 0.3.x is no longer supported.
"""
from __future__ import annotations

import logging
from typing import Any

from lmcache_ascend.integration.vllm.config import UNSUPPORTED
from lmcache_ascend.integration.vllm.patches.patch_gpu_connector_factory import DEVICES

logger = logging.getLogger(__name__)
_MARK = "_lmcache_ascend_patched"
TRUE_VALUES = ("1", "true", "yes")


def apply() -> None:
    from lmcache_ascend.integration.vllm.lmcache_compat import HAS_GPU_CONNECTOR_FACTORY

    if HAS_GPU_CONNECTOR_FACTORY:
        return
    import lmcache.integration.vllm.vllm_v1_adapter as adapter

    name = "_init_lmcache_engine" if hasattr(adapter, "_init_lmcache_engine") else "init_lmcache_engine"
    original = getattr(adapter, name)
    if getattr(original, _MARK, False):
        return

    def init_engine(lmcache_config: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        from vllm.platforms import current_platform

        device_type = current_platform.device_type
        if device_type not in DEVICES:
            return original(lmcache_config, vllm_config, *args, **kwargs)
        if name != "_init_lmcache_engine":
            import lmcache

            raise RuntimeError(f"LMCache {getattr(lmcache, '__version__', '0.3.x')}'s worker side is CUDA-only (its "
                               f"engine set-up and local CPU backend use torch.cuda), so lmcache-ascend cannot serve "
                               f"it on {device_type}: install lmcache==0.3.7 (or a 0.5.x release)")
        return _build_engine(adapter, lmcache_config, vllm_config, device_type)

    init_engine.__name__ = name
    setattr(init_engine, _MARK, True)
    setattr(adapter, name, init_engine)


def _build_engine(adapter: Any, lmcache_config: Any, vllm_config: Any, device_type: str) -> Any:
    """LMCache 0.3.7's engine for vLLM's model, as its adapter would build it, with our connectors."""
    engine = adapter.LMCacheEngineBuilder.get(adapter.ENGINE_NAME)
    if engine is not None:
        return engine
    for key in UNSUPPORTED:
        if getattr(lmcache_config, key, False):
            raise ValueError(f"LMCache setting {key}=True is not supported by lmcache-ascend on {device_type}; "
                             f"set {key}: false")
    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    use_mla = adapter.mla_enabled(model)
    if use_mla and lmcache_config.remote_serde not in (None, "naive"):
        raise ValueError(f"LMCache setting remote_serde={lmcache_config.remote_serde!r} cannot store MLA caches; "
                         "set remote_serde: naive")
    if use_mla:
        store_on_every_rank(lmcache_config, device_type)
    num_layers = model.get_num_layers(parallel) + adapter._calculate_draft_layers(vllm_config, model)
    kv_shape = (num_layers, 1 if use_mla else 2, lmcache_config.chunk_size, model.get_num_kv_heads(parallel),
                model.get_head_size())
    kv_dtype = adapter.get_kv_cache_torch_dtype(vllm_config.cache_config.cache_dtype, model.dtype)
    metadata = adapter.LMCacheEngineMetadata(model.model, parallel.world_size, parallel.rank, "vllm", kv_dtype,
                                             kv_shape, use_mla)

    from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector, PagedKVLayerwiseConnector

    connector_class = PagedKVLayerwiseConnector if lmcache_config.use_layerwise else PagedKVConnector
    connector = connector_class.from_metadata(metadata, use_gpu=False, device=_device(device_type))
    group = adapter.get_tp_group()
    return adapter.LMCacheEngineBuilder.get_or_create(adapter.ENGINE_NAME, lmcache_config, metadata, connector,
                                                      group.broadcast, group.broadcast_object)


def store_on_every_rank(lmcache_config: Any, device_type: str) -> None:
    """MLA: LMCache 0.3.7 defaults to save_only_first_rank, and its engine then broadcasts through a
    torch.cuda.Stream (our connectors have no load_stream to lend it), which fails off CUDA."""
    extra = dict(lmcache_config.extra_config or {})
    chosen = extra.get("save_only_first_rank")
    if chosen is not None and str(chosen).lower() in TRUE_VALUES:
        raise ValueError(f"LMCache extra_config save_only_first_rank={chosen!r} is not supported by lmcache-ascend "
                         f"on {device_type} with LMCache 0.3.x (it broadcasts through a CUDA stream); set "
                         "extra_config save_only_first_rank: false or upgrade to LMCache 0.5.x")
    if chosen is None:
        logger.info("lmcache-ascend: MLA model on %s with LMCache 0.3.x: save_only_first_rank set to False (its "
                    "broadcast needs CUDA), so every tensor-parallel rank stores its own copy", device_type)
    extra["save_only_first_rank"] = False
    lmcache_config.extra_config = extra


def _device(device_type: str) -> str:
    if device_type == "npu":  # vLLM-Ascend's worker has already selected its NPU
        import torch

        return f"npu:{torch.npu.current_device()}"
    return device_type
