"""Give LMCache's GPU-connector factory branches for host-memory (vLLM CPU) and Ascend KV caches.

Why: `lmcache.v1.gpu_connector.CreateGPUConnector` knows cuda, xpu, musa and hpu only. On vLLM's
  CPU platform and on Ascend it raises "No supported cpu connector found" and LMCache silently
  recomputes everything. There is no extension point for it: DeviceSpec and the
  `lmcache.device_plugins` entry points cover ops, pinned memory and IPC, not connectors.
How: rebind `CreateGPUConnector` in `lmcache.v1.gpu_connector` (vLLM's service factory imports it
  from there at call time) to a wrapper that returns lmcache_ascend's PagedKVConnector /
  PagedKVLayerwiseConnector for vLLM on cpu and npu, and calls the original otherwise.
Versions: LMCache 0.5.x (checked against 0.5.6); 0.3.x has no factory (patch_lmcache03_engine).
Remove when: LMCache's factory offers a device-plugin hook for connectors; register through it.
"""
from __future__ import annotations

from typing import Any

from lmcache_ascend.integration.vllm.config import UNSUPPORTED

_MARK = "_lmcache_ascend_patched"
DEVICES = ("cpu", "npu")  # vLLM platforms served by our connectors (also patch_lmcache03_engine)


def apply() -> None:
    from lmcache_ascend.integration.vllm.lmcache_compat import HAS_GPU_CONNECTOR_FACTORY

    if not HAS_GPU_CONNECTOR_FACTORY:  # LMCache 0.3.x: patch_lmcache03_engine
        return
    import lmcache
    import lmcache.v1.gpu_connector as factory_module

    original = factory_module.CreateGPUConnector
    if getattr(original, _MARK, False):
        return

    def CreateGPUConnector(config: Any, metadata: Any, engine: Any, layout_hints: Any = None) -> Any:  # noqa: N802
        from lmcache.utils import EngineType

        if engine != EngineType.VLLM or lmcache.torch_device_type not in DEVICES:
            return original(config, metadata, engine, layout_hints=layout_hints)
        from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector, PagedKVLayerwiseConnector

        for key in UNSUPPORTED:
            if getattr(config, key, False):
                raise ValueError(f"LMCache setting {key}=True is not supported by lmcache-ascend on "
                                 f"{lmcache.torch_device_type}; set {key}: false")
        cls = PagedKVLayerwiseConnector if config.use_layerwise else PagedKVConnector
        device = f"{lmcache.torch_device_type}:{metadata.local_worker_id}"
        return cls.from_metadata(metadata, use_gpu=False, device=device, layout_hints=layout_hints)

    setattr(CreateGPUConnector, _MARK, True)
    factory_module.CreateGPUConnector = CreateGPUConnector
