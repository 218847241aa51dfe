"""Metadata hook: how this wheel depends on lmcache-ascend-core.

Built from this repository (the core's sources sit next to this package), the dependency points at
them, so `pip install packages/lmcache-ascend-vllm` alone builds and installs the matching core.
Built anywhere else (an sdist, a release), it is the bounded version range below, resolved from an
index. Set LMCACHE_ASCEND_CORE_FROM_INDEX=1 to force the range (e.g. with a prebuilt core wheel
given through --find-links).
"""
from __future__ import annotations

import os
from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface

CORE_RANGE = "lmcache-ascend-core>=0.1,<0.2"
# LMCache is installed with its dependencies by users; its CUDA-only ones are not needed on CPU or
# Ascend hosts (the --no-deps recipe: docs/deployment.md, "LMCache without its CUDA-only
# dependencies"). 0.3.7 and 0.5.x are the generations docs/compatibility.md lists; 0.3.3's vLLM
# side needs CUDA and is refused at start with the fix.
LMCACHE_RANGE = "lmcache>=0.3.7,<0.6"


class CoreDependencyHook(MetadataHookInterface):
    PLUGIN_NAME = "custom"

    def update(self, metadata: dict) -> None:
        core = Path(self.root).parent / "lmcache-ascend-core"
        if (core / "pyproject.toml").is_file() and not os.environ.get("LMCACHE_ASCEND_CORE_FROM_INDEX"):
            core_dep = f"lmcache-ascend-core @ {core.resolve().as_uri()}"
        else:
            core_dep = CORE_RANGE
        metadata["dependencies"] = [core_dep, LMCACHE_RANGE]
