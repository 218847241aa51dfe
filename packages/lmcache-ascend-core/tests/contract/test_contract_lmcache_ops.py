"""lmcache_ascend.c_ops / lmcache_ascend.ops against the installed LMCache release's own sources:
every op that release uses exists here and accepts the arguments it passes.

test_ops_surface.py checks what the ops *do* and pins our public names; this file derives what
LMCache *needs* from LMCache itself, so a release that calls a new op or passes a new keyword fails here.
"""
from __future__ import annotations

import inspect

import pytest

from lmcache_call_sites import (binding_problem, c_ops_uses, device_ops_calls, generation, lmcache_release,
                                override_problem)

RELEASE = lmcache_release()
pytestmark = pytest.mark.skipif(RELEASE is None, reason="LMCache is not installed: nothing to check against "
                                                        "(the contract sessions install the row's release)")
VERSION, ROOT = RELEASE if RELEASE else ("", None)
GEN = generation(VERSION) if RELEASE else 0

# What LMCache 0.3.x calls in lmcache.c_ops that lmcache_ascend.c_ops deliberately lacks: CUDA-only
# features, each off by default. Any other missing name fails the test.
NOT_PROVIDED_C_OPS = {
    "encode_fast_new": "CacheGen serde (remote_serde: cachegen); use the default naive serde",
    "calculate_cdf": "CacheGen serde (remote_serde: cachegen); use the default naive serde",
    "decode_fast_prefsum": "CacheGen serde (remote_serde: cachegen); use the default naive serde",
    "rotary_embedding_k_fused": "CacheBlend (enable_blending), rejected by the connector's settings check",
    "get_gpu_pci_bus_id": "NUMA auto-detection (numa_mode: auto) reads a CUDA device's PCI bus; "
                          "use numa_mode: manual or leave it unset",
}


def test_installed_release_is_the_rows(contract_row):
    if contract_row is None:
        pytest.skip("LMCACHE_ASCEND_CONTRACT_ROW is not set: checking whatever LMCache is installed")
    assert VERSION == contract_row["lmcache"], (
        f"the session installed LMCache {VERSION} but its matrix row {contract_row['name']} names "
        f"{contract_row['lmcache']}: install lmcache=={contract_row['lmcache']}")


@pytest.mark.skipif(GEN != 3, reason=f"LMCache {VERSION} is not a 0.3.x release (those call lmcache.c_ops)")
def test_c_ops_serves_every_call_lmcache_03_makes():
    import lmcache_ascend.c_ops as c_ops

    uses = c_ops_uses(ROOT)
    names = {u.name for u in uses}
    assert {"multi_layer_kv_transfer", "single_layer_kv_transfer"} <= names, (
        f"found no KV-transfer call in LMCache {VERSION}'s sources ({sorted(names)}): the reader is broken")
    problems = []
    for use in uses:
        if use.name in NOT_PROVIDED_C_OPS:
            continue
        fn = getattr(c_ops, use.name, None)
        if not callable(fn):
            problems.append(f"{use.describe()}: lmcache_ascend.c_ops has no {use.name}")
        elif problem := binding_problem(fn, use):
            problems.append(problem)
    assert not problems, f"LMCache {VERSION}:\n" + "\n".join(problems)
    missing = {n for n in names if not hasattr(c_ops, n)}
    assert missing <= set(NOT_PROVIDED_C_OPS)
    print(f"LMCache {VERSION}: {len(uses)} uses of lmcache.c_ops, {len(names - missing)} ops served "
          f"({', '.join(sorted(names - missing))}); not provided: "
          + "; ".join(f"{n} ({NOT_PROVIDED_C_OPS[n]})" for n in sorted(missing)))


@pytest.mark.skipif(GEN != 3, reason=f"LMCache {VERSION} is not a 0.3.x release")
def test_c_ops_pinned_memory_matches_lmcache_03_cpu_fallback():
    """0.3.x hands c_ops' allocators to its memory pool or, without CUDA, those of
    lmcache.non_cuda_equivalents: ours must take every argument either one takes."""
    import importlib.util

    import lmcache_ascend.c_ops as c_ops

    if importlib.util.find_spec("lmcache.non_cuda_equivalents") is None:
        pytest.skip(f"LMCache {VERSION} has no lmcache.non_cuda_equivalents")
    import lmcache.non_cuda_equivalents as fallback

    names = [n for n in ("alloc_pinned_ptr", "free_pinned_ptr", "alloc_pinned_numa_ptr", "free_pinned_numa_ptr")
             if hasattr(fallback, n)]
    assert names, f"LMCache {VERSION}'s non_cuda_equivalents has no pinned-memory functions"
    problems = [p for n in names if (p := override_problem(getattr(c_ops, n), getattr(fallback, n), n))]
    assert not problems, "\n".join(problems)


def _ops_and_lmcache_types():
    """lmcache_ascend.ops' public callables, minus its types: those it re-exports from LMCache must be
    LMCache's own objects (bind_native then rebinds them to themselves); the fast paths' plan types
    (ops._PLAN_TYPES) are ours."""
    import lmcache.lmcache_native as native

    import lmcache_ascend.ops as ops

    public = {n: getattr(ops, n) for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n))}
    types = {n: t for n, t in public.items() if isinstance(t, type)}
    foreign = sorted(n for n, t in types.items() if n not in ops._PLAN_TYPES and t is not getattr(native, n, None))
    assert not foreign, f"types in lmcache_ascend.ops that are not LMCache's own: {foreign}"
    assert all(types[n].__module__ == ops.__name__ for n in ops._PLAN_TYPES), "the plan types are ops' own"
    return {n: f for n, f in public.items() if n not in types}


def _device_ops_reference(name: str):
    """LMCache 0.5.x's DeviceOps.<name>, or the torch fallback it forwards *args/**kwargs to."""
    from lmcache.v1.platform.base import device_ops as base

    method = getattr(base.DeviceOps, name, None)
    if method is None:
        return None
    params = inspect.signature(method).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in params) and hasattr(base, "torch_ops"):
        return getattr(base.torch_ops, name, method)
    return method


@pytest.mark.skipif(GEN != 5, reason=f"LMCache {VERSION} is not a 0.5.x release (those bind lmcache_ascend.ops)")
def test_every_op_we_bind_replaces_a_device_op_with_its_signature():
    """NpuDeviceOps.ensure_native binds every public callable of lmcache_ascend.ops over DeviceOps'
    torch fallback of the same name: each must exist there and take the same arguments, or be an
    optional op LMCache looks up on the device ops and calls (MP mode's fast paths; their calls are
    checked against ours by the next test)."""
    ours = _ops_and_lmcache_types()
    called = {c.name for c in device_ops_calls(ROOT)}
    problems = []
    for name, fn in sorted(ours.items()):
        reference = _device_ops_reference(name)
        if reference is None and name in called:
            continue
        if reference is None:
            problems.append(f"lmcache_ascend.ops.{name}: LMCache {VERSION}'s DeviceOps has no {name}; bind_native "
                            "would add an op nothing calls")
        elif problem := override_problem(fn, reference, name):
            problems.append(problem)
    assert not problems, f"LMCache {VERSION}:\n" + "\n".join(problems)


@pytest.mark.skipif(GEN != 5, reason=f"LMCache {VERSION} is not a 0.5.x release")
def test_ops_serves_every_device_ops_call_lmcache_05_makes():
    import lmcache_ascend.ops as ops

    ours = set(_ops_and_lmcache_types())
    calls = [c for c in device_ops_calls(ROOT) if c.name in ours]
    assert {c.name for c in calls} >= {"multi_layer_kv_transfer", "single_layer_kv_transfer"}, (
        f"found no device_ops KV-transfer call in LMCache {VERSION}'s sources: the reader is broken")
    problems = [p for c in calls if (p := binding_problem(getattr(ops, c.name), c))]
    assert not problems, f"LMCache {VERSION}:\n" + "\n".join(problems)
    print(f"LMCache {VERSION}: {len(calls)} device_ops calls of {len({c.name for c in calls})} ops we bind checked")
