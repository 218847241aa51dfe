"""Every monkey patch this integration applies, one per module, applied by one explicit call
(patch_vllm_ascend_connector_name excepted: vLLM runs it at start-up through ../plugin.py).

Each module's docstring says why it exists, how it works, which upstream versions it targets and
when to remove it. Patches are idempotent: vLLM's engine processes import and apply them again.
"""
from __future__ import annotations

from lmcache_ascend.integration.vllm.patches import (
    patch_gpu_connector_factory,
    patch_lmcache03_engine,
    patch_local_cpu_allocator,
    patch_remote_backend_warnings,
)

# Each patch applies only to the LMCache generation it names (and returns at once on the other).
PATCHES = (patch_gpu_connector_factory, patch_lmcache03_engine, patch_local_cpu_allocator,
           patch_remote_backend_warnings)


def apply_patches() -> None:
    for patch in PATCHES:
        patch.apply()
