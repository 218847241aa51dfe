"""vLLM general plugin of lmcache-ascend-vllm (entry point group vllm.general_plugins, name
"lmcache_ascend"): vLLM runs it in every engine and worker process at start-up. Kept cheap and
import-light: it only prepares what must exist before vLLM resolves a connector by name."""
from __future__ import annotations

from lmcache_ascend.integration.vllm.patches import patch_vllm_ascend_connector_name


def register() -> None:
    patch_vllm_ascend_connector_name.apply()
