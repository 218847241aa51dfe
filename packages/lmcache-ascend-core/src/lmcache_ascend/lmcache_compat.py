"""The supported surface of the core's LMCache compatibility layer for integration wheels
(lmcache-ascend-vllm, lmcache-ascend-ms).

Integration wheels import these names from here, never from `lmcache_ascend._lmcache_compat`,
whose other contents may change between core releases. What an integration alone needs about
LMCache (e.g. the vLLM connector's differences between generations) lives in that integration.
Importing this module imports LMCache.
"""
from __future__ import annotations

from lmcache_ascend._lmcache_compat import GENERATION, MemoryFormat, discover_kv_layout, first_tensor

__all__ = ["GENERATION", "MemoryFormat", "discover_kv_layout", "first_tensor"]
