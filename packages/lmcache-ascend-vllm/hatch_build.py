"""Metadata hook: how this wheel depends on lmcache-ascend-core.

Built from this repository (the core's sources sit next to this package), the dependency points at
them, so `pip install packages/lmcache-ascend-vllm` alone builds and installs the matching core.
Built anywhere else (an sdist, a release), it is the bounded version range below, resolved from an
index. Set LMCACHE_ASCEND_CORE_FROM_INDEX=1 to force the range (e.g. with a prebuilt core wheel
given through --find-links).
"""
from __future__ import annotations

import os
import runpy
from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface

CORE_RANGE = "lmcache-ascend-core>=0.1,<0.2"
# LMCache is installed with its dependencies by users; its CUDA-only ones are not needed on CPU or
# Ascend hosts (the --no-deps recipe: docs/deployment.md, "LMCache without its CUDA-only
# dependencies"). Its range is the one the connector checks when it is built (one table:
# supported_versions.SUPPORTED; 0.3.3's vLLM side needs CUDA and is refused there with the fix).
SUPPORTED_VERSIONS = Path("src", "lmcache_ascend", "integration", "vllm", "supported_versions.py")
# packaging: the connector compares the installed versions with those ranges.
PACKAGING = "packaging>=20"


def lmcache_requirement(root: Path) -> str:
    (distribution,), spec = runpy.run_path(str(root / SUPPORTED_VERSIONS))["SUPPORTED"]["LMCache"]
    return distribution + spec


class CoreDependencyHook(MetadataHookInterface):
    PLUGIN_NAME = "custom"

    def update(self, metadata: dict) -> None:
        core = Path(self.root).parent / "lmcache-ascend-core"
        if (core / "pyproject.toml").is_file() and not os.environ.get("LMCACHE_ASCEND_CORE_FROM_INDEX"):
            core_dep = f"lmcache-ascend-core @ {core.resolve().as_uri()}"
        else:
            core_dep = CORE_RANGE
        metadata["dependencies"] = [core_dep, lmcache_requirement(Path(self.root)), PACKAGING]
