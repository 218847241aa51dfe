"""LMCacheAscendConnectorV1Dynamic and our GPU connectors against the installed vLLM and LMCache
releases' own code: the vLLM connector interface (KVConnectorBase_V1's abstract methods), the way
that release's KVConnectorFactory finds and constructs a connector, and LMCache's GPU-connector
interface.

Checks read from the release's sources run on every row; checks that import the release run where
it imports (vLLM 0.9.1 - 0.11.2 and 0.32 do here on CPU torch 2.13, without their compiled _C; LMCache
0.3.3's vLLM connector does not, nor LMCache 0.3.7's under vLLM >= 0.11.1); otherwise the skip
reason says why.
"""
from __future__ import annotations

import importlib
import re

import pytest

from lmcache_call_sites import generation, lmcache_release, override_problem
from vllm_release import (OUR_CLASS, OUR_MODULE, V1_DIR, abstract_methods, accepts, factory_constructor_calls,
                          build_vllm_config, create_connector, import_vllm, methods, module_path, vllm_release)

VLLM = vllm_release()
LMCACHE = lmcache_release()
pytestmark = pytest.mark.skipif(VLLM is None or LMCACHE is None,
                                reason=f"needs vLLM and LMCache installed (vLLM: {VLLM and VLLM[1]}, "
                                       f"LMCache: {LMCACHE and LMCACHE[0]}); the contract sessions install the row's")
VLLM_DIST, VLLM_VERSION, VLLM_DIR = VLLM if VLLM else ("", "", None)
LMCACHE_VERSION, LMCACHE_DIR = LMCACHE if LMCACHE else ("", None)
API, IMPORT_ERROR = import_vllm() if VLLM else (None, "vLLM is not installed")


def _upstream_import_error(module: str) -> str:
    """Why LMCache's own `module` does not import here ("" when it does): then neither does ours."""
    if not (VLLM and LMCACHE) or API is None:
        return ""
    import warnings

    try:
        with warnings.catch_warnings():  # the blocking error is the finding, not deprecation noise on the way
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as exc:  # the finding itself: reported in the skip reason
        return f"{type(exc).__name__}: {exc}"
    return ""


LMCACHE_CONNECTOR_ERROR = _upstream_import_error("lmcache.integration.vllm.lmcache_connector_v1")
needs_import = pytest.mark.skipif(
    API is None or bool(LMCACHE_CONNECTOR_ERROR),
    reason=f"vLLM {VLLM_VERSION}'s Python code does not import here ({IMPORT_ERROR})" if API is None else
    f"LMCache {LMCACHE_VERSION}'s own vLLM connector (lmcache.integration.vllm.lmcache_connector_v1, which ours "
    f"subclasses) does not import with vLLM {VLLM_VERSION} on this CPU-only host: {LMCACHE_CONNECTOR_ERROR}; "
    "the sources are checked instead")
STACK = f"vLLM {VLLM_VERSION} + LMCache {LMCACHE_VERSION}"
GENERATION = generation(LMCACHE_VERSION) if LMCACHE else 0


def test_installed_releases_are_the_rows(contract_row):
    print(f"{VLLM_DIST} {VLLM_VERSION} ({'imports' if API else 'does not import: ' + IMPORT_ERROR}), "
          f"LMCache {LMCACHE_VERSION}")
    if contract_row is None:
        pytest.skip("LMCACHE_ASCEND_CONTRACT_ROW is not set: checking whatever is installed")
    assert (VLLM_VERSION, LMCACHE_VERSION) == (contract_row["vllm"], contract_row["lmcache"]), (
        f"installed {STACK}, but matrix row {contract_row['name']} names vLLM {contract_row['vllm']} + "
        f"LMCache {contract_row['lmcache']}: install those")


# ---- from the sources (every row) -----------------------------------------------------------------

def _our_methods() -> dict[str, list]:
    """Our connector's methods as Python resolves them: ours, then LMCache's LMCacheConnectorV1Dynamic."""
    lmcache_connector = LMCACHE_DIR / "integration" / "vllm" / "lmcache_connector_v1.py"
    return {**methods(lmcache_connector, "LMCacheConnectorV1Dynamic"),
            **methods(module_path(OUR_MODULE), OUR_CLASS)}


def test_sources_every_abstract_method_is_implemented():
    abstract = abstract_methods(VLLM_DIR)
    assert {"start_load_kv", "build_connector_meta"} <= set(abstract), (
        f"read no abstract methods from vLLM {VLLM_VERSION}'s {V1_DIR / 'base.py'}: {sorted(abstract)}")
    ours = _our_methods()
    problems = []
    for name, params in sorted(abstract.items()):
        if name not in ours:
            problems.append(f"{name}{[p for p, _ in params]}: abstract in vLLM {VLLM_VERSION}, implemented neither "
                            f"by {OUR_CLASS} nor by LMCache {LMCACHE_VERSION}'s LMCacheConnectorV1Dynamic")
            continue
        named = [p for p, _ in params if p not in ("*", "**")]
        mine = [p for p, _ in ours[name] if p not in ("*", "**")]
        if mine[:len(named)] != named and not any(p == "*" for p, _ in ours[name]):
            problems.append(f"{name}: vLLM {VLLM_VERSION} passes {named}, the implementation takes {mine}")
    assert not problems, f"{STACK}:\n" + "\n".join(problems)


def test_sources_factory_constructs_with_arguments_our_init_takes():
    counts = factory_constructor_calls(VLLM_DIR)
    assert counts, f"no connector_cls(...) call in vLLM {VLLM_VERSION}'s KVConnectorFactory V1 constructor"
    init = methods(module_path(OUR_MODULE), OUR_CLASS)["__init__"]
    refused = [n for n in counts if not accepts(init, n)]
    assert not refused, f"vLLM {VLLM_VERSION} constructs connectors with {refused} arguments; ours takes {init}"
    print(f"vLLM {VLLM_VERSION} constructs connectors with {sorted(set(counts))} positional arguments")


# ---- imported ------------------------------------------------------------------------------------

def _our_class():
    return getattr(importlib.import_module(OUR_MODULE), OUR_CLASS)


@needs_import
def test_connector_is_a_complete_kv_connector_of_this_release():
    cls = _our_class()
    base = API.KVConnectorBase_V1
    assert issubclass(cls, base)
    assert not cls.__abstractmethods__, f"{STACK}: still abstract: {sorted(cls.__abstractmethods__)}"
    problems = [p for name in sorted(base.__abstractmethods__)
                if (p := override_problem(getattr(cls, name), getattr(base, name), name))]
    assert not problems, f"{STACK}:\n" + "\n".join(problems)


@needs_import
def test_factory_loads_it_by_module_path():
    if not hasattr(API.KVConnectorFactory, "get_connector_class"):
        pytest.skip(f"vLLM {VLLM_VERSION} resolves the class inside create_connector_v1 (the construction tests "
                    "below go through it)")
    ktc = API.KVTransferConfig(kv_connector=OUR_CLASS, kv_role="kv_both", kv_connector_module_path=OUR_MODULE)
    assert API.KVConnectorFactory.get_connector_class(ktc) is _our_class()


@pytest.fixture(scope="module")
def vllm_config():
    config, platform = build_vllm_config(API)
    print(f"VllmConfig of vLLM {VLLM_VERSION} built (CPU platform {platform})")
    return config


@needs_import
def test_factory_constructs_it_for_the_scheduler(vllm_config):
    """The scheduler side, constructed as this vLLM does: LMCache's lookup client, no KV transfer.
    (The worker side builds LMCache's engine in vLLM's worker processes: end to end on the CPU row.)"""
    role = API.KVConnectorRole.SCHEDULER
    connector = create_connector(API, vllm_config, role)
    try:
        assert type(connector) is _our_class()
        assert connector.role == role
        assert connector._lmcache_engine is not None
    finally:
        _shut_down(connector)


@needs_import
def test_factory_constructs_it_for_a_worker_that_moves_kv_through_lmcache():
    """The worker side, constructed as this vLLM does: LMCache's own engine, built through our patches
    with our connector and pool, stores every layer of a vLLM-CPU-shaped paged cache and puts it back
    bit-exact (worker_round_trip.py, in its own process: vLLM's distributed state is process-global,
    and LMCache's threads outlive its engine)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("worker_round_trip.py")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("ROUND TRIP ")]
    print("\n".join(lines))
    # LMCache 0.3.3 builds its worker engine in vllm_adapter.init_lmcache_engine, CUDA-only (see
    # patch_lmcache03_engine): there the connector must refuse with the fix, not crash inside LMCache.
    adapter = (LMCACHE_DIR / "integration" / "vllm" / "vllm_v1_adapter.py").read_text(encoding="utf-8")
    expected = "ROUND TRIP ok" if GENERATION == 5 or "def _init_lmcache_engine" in adapter else "ROUND TRIP refused"
    assert run.returncode == 0 and lines and lines[-1].startswith(expected), (
        f"{STACK}: expected {expected!r}, worker side exited {run.returncode}:\n{run.stdout[-3000:]}\n"
        f"{run.stderr[-6000:]}")


def test_supported_versions_accept_the_rows_that_serve_the_connector(contract_row):
    """The connector's version check (supported_versions.SUPPORTED) accepts every matrix row whose
    stack runs our connector and refuses, with the fix, the one that does not (LMCache 0.3.3)."""
    from lmcache_ascend.integration.vllm.supported_versions import (SUPPORTED, UnsupportedVersionError,
                                                                    check_supported_versions)

    if contract_row is None:
        pytest.skip("LMCACHE_ASCEND_CONTRACT_ROW is not set: no row says whether this stack serves the connector")
    if contract_row.get("connector", True):
        found = check_supported_versions()
        assert (found["vLLM"][1], found["LMCache"][1]) == (VLLM_VERSION, LMCACHE_VERSION)
        return
    lmcache_range = SUPPORTED["LMCache"][1]
    with pytest.raises(UnsupportedVersionError, match=re.escape(f"LMCache {LMCACHE_VERSION} is installed") + ".*"
                       + re.escape(f"pip install 'lmcache{lmcache_range}'")):
        check_supported_versions()


@needs_import
def test_factory_build_refuses_an_unsupported_release_with_the_fix(vllm_config, monkeypatch):
    """Built by this vLLM's factory under a vLLM the connector does not support, it refuses before
    LMCache starts, naming the installed version, the range and the pip command."""
    import importlib.metadata

    from lmcache_ascend.integration.vllm.supported_versions import SUPPORTED, UnsupportedVersionError

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "0.34.0" if dist == VLLM_DIST else real(dist))
    vllm_range = SUPPORTED["vLLM"][1]
    with pytest.raises(UnsupportedVersionError, match=re.escape(
            f"vLLM 0.34.0 is installed (distribution {VLLM_DIST}), supported: {vllm_range}; "
            f"fix: pip install '{VLLM_DIST}{vllm_range}'")):
        create_connector(API, vllm_config, API.KVConnectorRole.SCHEDULER)


def _shut_down(connector) -> None:
    """Stop what LMCache started (its threads would keep the test process alive)."""
    impl = connector._lmcache_engine
    if hasattr(impl, "shutdown"):  # LMCache 0.5.x
        impl.shutdown()
        return
    # LMCache 0.3.x: the scheduler's lookup client, and the worker's engine, whose storage thread is
    # not a daemon. (Closing the worker's lookup and offload servers under their receiving threads
    # aborts the process.)
    if hasattr(getattr(impl, "lookup_client", None), "close"):
        impl.lookup_client.close()
    from lmcache.integration.vllm.utils import ENGINE_NAME
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    LMCacheEngineBuilder.destroy(ENGINE_NAME)


# ---- LMCache's GPU-connector interface ------------------------------------------------------------

@pytest.mark.skipif(bool(_upstream_import_error("lmcache.v1.gpu_connector")),
                    reason=f"LMCache {LMCACHE_VERSION}'s lmcache.v1.gpu_connector does not import on this CPU-only "
                           f"host: {_upstream_import_error('lmcache.v1.gpu_connector')}")
def test_gpu_connectors_implement_lmcache_interface():
    """Our PagedKVConnector stands in for LMCache's whole-chunk connectors (GPUConnectorInterface);
    PagedKVLayerwiseConnector for its VLLMPagedMemLayerwiseGPUConnector, whose generator methods
    take their own arguments."""
    from lmcache_ascend.integration.vllm.lmcache_compat import gpu_connector_bases
    from lmcache_ascend.integration.vllm.kv_connectors import PagedKVConnector, PagedKVLayerwiseConnector

    interface, layerwise = gpu_connector_bases()
    problems = []
    for ours, reference in ((PagedKVConnector, interface), (PagedKVLayerwiseConnector, layerwise)):
        if not issubclass(ours, interface):
            problems.append(f"{ours.__name__} is not a {interface.__module__}.GPUConnectorInterface")
        if ours.__abstractmethods__:
            problems.append(f"{ours.__name__} leaves abstract: {sorted(ours.__abstractmethods__)}")
        for name in sorted(interface.__abstractmethods__):
            if name in vars(ours) and (p := override_problem(getattr(ours, name), getattr(reference, name), name)):
                problems.append(f"{ours.__name__}.{p}")
    assert not problems, f"LMCache {LMCACHE_VERSION} (generation {GENERATION}):\n" + "\n".join(problems)
