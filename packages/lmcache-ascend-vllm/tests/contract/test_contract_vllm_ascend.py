"""vllm-ascend's own name for LMCache on the NPU, "LMCacheAscendConnector", against the installed
vllm-ascend release's code: it must give users of that name our connector (see
lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name).

The wheel is installed --no-deps: its KV-connector registration imports without torch_npu; its
platform, compiled ops and models do not, and are not used.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_release import OUR_CLASS, OUR_PLUGINS_ONLY, VLLM_ASCEND_NAME

try:
    VLLM_ASCEND = importlib.metadata.version("vllm-ascend")
except importlib.metadata.PackageNotFoundError:
    VLLM_ASCEND = None
pytestmark = pytest.mark.skipif(VLLM_ASCEND is None, reason="vllm-ascend is not installed: the rows whose "
                                "vllm-ascend release registers LMCacheAscendConnector (0.23) install it")


def _vllm_ascend_registration() -> dict[str, tuple[str, str]]:
    """name -> (module, class) of every KVConnectorFactory.register_connector call in vllm-ascend."""
    source = Path(importlib.util.find_spec("vllm_ascend").submodule_search_locations[0],
                  "distributed", "kv_transfer", "__init__.py")
    found = {}
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "register_connector" and \
                len(node.args) == 3 and all(isinstance(a, ast.Constant) for a in node.args):
            name, module, cls = (a.value for a in node.args)
            found[name] = (module, cls)
    return found


def test_vllm_ascend_registers_the_name_where_we_serve_it():
    from lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name import CLASS_NAME, VLLM_ASCEND_MODULE

    registered = _vllm_ascend_registration()
    assert registered.get(VLLM_ASCEND_NAME) == (VLLM_ASCEND_MODULE, CLASS_NAME), (
        f"vllm-ascend {VLLM_ASCEND} registers {VLLM_ASCEND_NAME} as {registered.get(VLLM_ASCEND_NAME)}; "
        f"patch_vllm_ascend_connector_name serves ({VLLM_ASCEND_MODULE!r}, {CLASS_NAME!r}): update the patch")


def test_our_plugin_is_a_vllm_general_plugin():
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
    assert plugins.get("lmcache_ascend") == "lmcache_ascend.integration.vllm.plugin:register", plugins


@pytest.mark.parametrize("order", ["ours first", "vllm-ascend's first", "its module imported first"])
def test_vllm_resolves_the_name_to_our_connector(order):
    """In a fresh process, as vLLM starts one: plugins and vllm-ascend's registration in either
    order (or after something imported vllm-ascend's real module), then the factory's lookup of the
    name (no module path given, as vllm-ascend's docs write it)."""
    from lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name import VLLM_ASCEND_MODULE

    preload = f"import {VLLM_ASCEND_MODULE};" if order == "its module imported first" else ""
    ours_first = order != "vllm-ascend's first"
    code = ("import sys; sys.path.insert(0, sys.argv[1]);" + preload +
            "from vllm_release import register_vllm_ascend_name, VLLM_ASCEND_NAME;"
            f"register_vllm_ascend_name(ours_first={ours_first});"
            "from vllm.config import KVTransferConfig;"
            "from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory;"
            "cls = KVConnectorFactory.get_connector_class(KVTransferConfig(kv_connector=VLLM_ASCEND_NAME, "
            "kv_role='kv_both'));"
            "print('RESOLVED', cls.__module__, cls.__qualname__)")
    run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **OUR_PLUGINS_ONLY})
    resolved = [line for line in run.stdout.splitlines() if line.startswith("RESOLVED ")]
    assert run.returncode == 0 and resolved, f"exit {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert resolved[-1] == f"RESOLVED lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1 {OUR_CLASS}"


def test_worker_moves_kv_through_our_stack_under_vllm_ascends_name():
    """worker_round_trip.py with the connector asked for as vllm-ascend users write it."""
    script = Path(__file__).with_name("worker_round_trip.py")
    run = subprocess.run([sys.executable, str(script), VLLM_ASCEND_NAME], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **OUR_PLUGINS_ONLY})
    lines = [line for line in run.stdout.splitlines() if line.startswith("ROUND TRIP ")]
    print("\n".join(lines))
    assert run.returncode == 0 and lines and lines[-1].startswith("ROUND TRIP ok"), (
        f"exit {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
