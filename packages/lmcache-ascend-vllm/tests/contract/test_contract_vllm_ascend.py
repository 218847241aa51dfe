"""Our code against the installed vllm-ascend release's own code: its name for LMCache on the NPU,
"LMCacheAscendConnector", must give users of that name our connector (see
lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name), and the KV caches its
worker registers (attention, DeepSeek MLA and DSA; shapes read from its sources) must be
recognised as the layouts our NPU kernels move.

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

from lmcache_ascend.integration.vllm import doctor_checks
from vllm_release import OUR_CLASS, OUR_PLUGINS_ONLY, VLLM_ASCEND_NAME

try:
    VLLM_ASCEND = importlib.metadata.version("vllm-ascend")
except importlib.metadata.PackageNotFoundError:
    VLLM_ASCEND = None
pytestmark = pytest.mark.skipif(VLLM_ASCEND is None, reason="vllm-ascend is not installed: the rows whose "
                                "vllm-ascend release registers LMCacheAscendConnector (0.23) install it")


def _vllm_ascend_file(*parts: str) -> Path:
    return Path(importlib.util.find_spec("vllm_ascend").submodule_search_locations[0], *parts)


def _vllm_ascend_registration() -> dict[str, tuple[str, str]]:
    """name -> (module, class) of every KVConnectorFactory.register_connector call in vllm-ascend."""
    source = _vllm_ascend_file("distributed", "kv_transfer", "__init__.py")
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
    assert doctor_checks.registers_lmcache_ascend_connector()  # the doctor finds it where the patch serves it


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


# ---- the KV caches a vllm-ascend worker registers ------------------------------------------------

def _kv_cache_shape(relative: str, backend: str, **dims: int) -> tuple[int, ...]:
    """What `backend.get_kv_cache_shape(**dims)` in vllm-ascend's `relative` returns, read from its
    source (the module itself imports torch_npu)."""
    tree = ast.parse(_vllm_ascend_file(*relative.split("/")).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == backend)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "get_kv_cache_shape")
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    assert len(returns) == 1, f"{relative}: {backend}.get_kv_cache_shape has {len(returns)} returns; re-read it"
    return eval(compile(ast.Expression(returns[0].value), relative, "eval"), {}, dict(dims))  # noqa: S307


# How vllm-ascend 0.23's NPUModelRunner._reshape_kv_cache_tensors turns those shapes into what it
# registers with the connector; each line must still be in its source.
RUNNER_STATEMENTS = {
    "k_shape = kv_cache_shape[1:]": "non-MLA layers: K and V are separate [NB, BS, NH, HS] tensors",
    "# k_cache: nope_cache    v_cache: rope_cache": "MLA layers: (latent, rope) planes",
    "kv_caches[layer_name] = (k_cache, v_cache)": "a layer is a (K, V) / (latent, rope) tuple",
    "kv_caches[layer_name] = (k_cache, v_cache, dsa_k_cache)": "DSA layers add the indexer key plane",
}


def test_model_runner_still_registers_what_we_read():
    source = _vllm_ascend_file("worker", "model_runner_v1.py").read_text(encoding="utf-8")
    missing = [f"{line!r} ({why})" for line, why in RUNNER_STATEMENTS.items() if line not in source]
    assert not missing, f"vllm-ascend {VLLM_ASCEND}'s model runner changed: " + "; ".join(missing)


def _registered_caches(kind: str, layers: int = 2):
    """CPU tensors shaped as a vllm-ascend worker registers them (dtype and device aside), and the
    hidden size LMCache's metadata gives for that model."""
    import torch

    nb, bs = 6, 128
    if kind == "attention":  # e.g. Qwen: 4 kv heads x 128
        nh, hs = 4, 128
        shape = _kv_cache_shape("attention/attention_v1.py", "AscendAttentionBackend", num_blocks=nb,
                                block_size=bs, num_kv_heads=nh, head_size=hs)
        assert shape[0] == 2, shape
        return [tuple(torch.randn(shape[1:]) for _ in range(2)) for _ in range(layers)], nh * hs, False
    # DeepSeek MLA: latent 512 + rope 64 per token; DSA (V3.2) adds a 128-wide indexer key
    shape = _kv_cache_shape("attention/mla_v1.py", "AscendMLABackend", num_blocks=nb, block_size=bs,
                            num_kv_heads=1, head_size=512 + 64)
    widths = (512, 64, 128) if kind == "dsa" else (512, 64)
    return ([tuple(torch.randn(*shape[:-1], w) for w in widths) for _ in range(layers)], sum(widths), True)


@pytest.mark.parametrize("kind,layout", [("attention", "separate_kv"), ("mla", "mla_planes"), ("dsa", "mla_planes")])
def test_registered_caches_are_recognised_and_described(kind, layout):
    from lmcache_ascend.lmcache_compat import discover_kv_layout
    from lmcache_ascend.layouts import describe_paged

    caches, hidden, use_mla = _registered_caches(kind)
    found, entries, what = discover_kv_layout(caches, hidden=hidden, use_mla=use_mla)
    assert found == layout, f"vllm-ascend {VLLM_ASCEND} {kind} caches read as {found} ({what}), expected {layout}"
    described = describe_paged(entries, found)
    assert described.hidden == hidden and described.num_layers == len(caches), (described, hidden)
