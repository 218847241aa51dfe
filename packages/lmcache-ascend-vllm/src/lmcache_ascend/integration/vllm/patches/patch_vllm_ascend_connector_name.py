"""vllm-ascend's own connector name, "LMCacheAscendConnector", served by our connector.

Why: vllm-ascend (0.23) registers "LMCacheAscendConnector" in vLLM's KVConnectorFactory as its module
  vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector, which runs
  `import lmcache_ascend` (expecting that import to adapt LMCache to the NPU) and then hands vLLM
  vLLM's stock LMCacheConnectorV1. With this project installed, `import lmcache_ascend` adapts
  nothing (our adaptation lives in the connector), so users following vllm-ascend's docs would run
  stock LMCache on the NPU, on none of our kernels, allocator or settings checks.
How: this project's vLLM general plugin (entry point "lmcache_ascend", run by vLLM in every engine
  and worker process before any connector is built) puts a module of that name in sys.modules whose
  LMCacheConnectorV1 is LMCacheAscendConnectorV1Dynamic, resolved on first use. vLLM's factory
  imports the module by name when the connector is created, so the order of vllm-ascend's and our
  plugin does not matter, and vllm-ascend's registration is left as it is. Nothing happens where
  vllm-ascend is not installed, or when the module was already imported (then the class is swapped
  in it, once).
Versions: vllm-ascend 0.23.0 (older releases have no such name: nothing to do).
Remove when: vllm-ascend registers this project's connector for that name, or drops the name.
"""
from __future__ import annotations

import importlib.util
import sys
import types

VLLM_ASCEND_MODULE = "vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector"
CLASS_NAME = "LMCacheConnectorV1"  # the attribute vllm-ascend's registration reads from that module


def _our_class():
    from lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1 import LMCacheAscendConnectorV1Dynamic

    return LMCacheAscendConnectorV1Dynamic


def _module_getattr(name: str):
    if name == CLASS_NAME:
        return _our_class()
    raise AttributeError(f"module {VLLM_ASCEND_MODULE!r} has no attribute {name!r}")


def apply() -> None:
    module = sys.modules.get(VLLM_ASCEND_MODULE)
    if getattr(module, "__lmcache_ascend__", False):
        return
    if module is not None:  # vllm-ascend's own module got there first
        setattr(module, CLASS_NAME, _our_class())
        module.__lmcache_ascend__ = True
        return
    try:
        if importlib.util.find_spec("vllm_ascend") is None:  # top level only: does not import vllm_ascend
            return
    except ValueError:  # a vllm_ascend module without a spec (a test's stand-in): not vllm-ascend
        return
    shim = types.ModuleType(VLLM_ASCEND_MODULE, "vllm-ascend's LMCacheAscendConnector, served by lmcache-ascend "
                                                "(lmcache_ascend.integration.vllm.patches."
                                                "patch_vllm_ascend_connector_name)")
    shim.__getattr__ = _module_getattr  # PEP 562: LMCacheConnectorV1 resolved when vLLM asks for it
    shim.__lmcache_ascend__ = True
    sys.modules[VLLM_ASCEND_MODULE] = shim
