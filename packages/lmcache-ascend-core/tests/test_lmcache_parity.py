"""LMCache 0.5.6's own parity suite for device modules (tests/v1/test_torch_ops.py, fetched from its
sdist at test time, never vendored) with lmcache_ascend.ops bound the way LMCache binds a device
module: each scenario runs on LMCache's torch baseline and on a CpuDeviceOps with our module bound;
results must be bit-identical, and every op the scenario exercises must be ours, not the baseline."""
from __future__ import annotations

import importlib.util
import os
import unittest.mock
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmcache.v1.platform.devices.cpu.device_ops", reason="needs LMCache >= 0.5")
from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps  # noqa: E402

import lmcache_ascend.ops  # noqa: E402
from kvref import same  # noqa: E402

UPSTREAM = os.environ.get("LMCACHE_UPSTREAM_TESTS")
SUITE = Path(UPSTREAM or ".") / "tests" / "v1" / "test_torch_ops.py"
if not SUITE.exists():
    why = f"LMCache's test_torch_ops.py not fetched ({SUITE}); nox -s tests_core fetches it"
    if os.environ.get("LMCACHE_ASCEND_REQUIRE_LMCACHE") == "1":
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

# Which DeviceOps names each upstream scenario exercises.
SCENARIO_OPS = {
    "transfer_direction_enum": ["multi_layer_block_kv_transfer"],
    "multi_layer_kv_transfer": ["multi_layer_kv_transfer"],
    "multi_layer_kv_transfer_unilateral": ["multi_layer_kv_transfer_unilateral"],
    "multi_layer_block_kv_transfer": ["multi_layer_block_kv_transfer"],
    "single_layer_kv_transfer": ["single_layer_kv_transfer"],
    "single_layer_kv_transfer_sgl": ["single_layer_kv_transfer_sgl"],
    "load_and_reshape_flash": ["load_and_reshape_flash"],
    "reshape_and_cache_back_flash": ["reshape_and_cache_back_flash"],
    "lmcache_memcpy_async": ["lmcache_memcpy_async"],
    "encode_fast_new": ["encode_fast_new"],
    "decode_fast_new": ["decode_fast_new"],
    "decode_fast_prefsum": ["decode_fast_prefsum"],
    "calculate_cdf": ["calculate_cdf"],
    "rotary_embedding_k_fused": ["rotary_embedding_k_fused"],
    "alloc_free_pinned_ptr": ["alloc_pinned_ptr", "free_pinned_ptr"],
    "alloc_free_pinned_numa_ptr": ["alloc_pinned_numa_ptr", "free_pinned_numa_ptr"],
    "alloc_free_numa_ptr": ["alloc_numa_ptr", "free_numa_ptr"],
    "alloc_free_shm_pinned_ptr": ["alloc_shm_pinned_ptr", "free_shm_pinned_ptr"],
    "get_gpu_pci_bus_id": ["get_gpu_pci_bus_id"],
    "record_drain_completion": ["record_completion_on_stream", "drain_recorded_completions"],
    "dispatcher_integration": ["record_completion_on_stream", "drain_recorded_completions"],
    "record_drain_event": ["record_event_on_stream", "drain_recorded_events"],
}
# Not native yet, each with why (the scenario still runs and must match the baseline).
NOT_OURS = {
    "get_gpu_pci_bus_id": "a CUDA-only query: no PCI bus id for the CPU or an NPU through this name",
}


def _load_suite():
    spec = importlib.util.spec_from_file_location("lmcache_upstream_test_torch_ops", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()


@pytest.fixture(scope="module")
def bound():
    ops = CpuDeviceOps()
    ops.bind_native(lmcache_ascend.ops)
    return ops


def _run(fn, ops):
    # The baseline's pointer memcpy uses libcudart when one is installed, even without a GPU;
    # on a CPU host its own CPU path is the reference.
    with unittest.mock.patch("torch.cuda.is_available", return_value=False), \
            unittest.mock.patch("lmcache.v1.platform.torch_ops.mem_kernels._get_copy_lib", return_value=None):
        return fn(ops, "cpu")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and same(a.detach().cpu(), b.detach().cpu())
    return a == b


@pytest.mark.parametrize("name", sorted(suite.SCENARIO_REGISTRY))
def test_scenario_matches_the_torch_baseline(name, bound):
    assert name in SCENARIO_OPS, f"new upstream scenario {name}: map it to the ops it exercises"
    fn = suite.SCENARIO_REGISTRY[name]
    expected = _run(fn, suite._py_ops)
    got = _run(fn, bound)
    assert (expected is None) == (got is None)
    if expected is not None:
        assert sorted(got) == sorted(expected)
        for key in expected:
            assert _equal(got[key], expected[key]), f"{name}/{key} differs from LMCache's torch baseline"


@pytest.mark.parametrize("name", sorted(SCENARIO_OPS))
def test_scenario_runs_our_native_ops(name, bound):
    if name in NOT_OURS:
        pytest.xfail(NOT_OURS[name])
    for op in SCENARIO_OPS[name]:
        fn = vars(bound).get(op)
        assert fn is not None and getattr(fn, "__module__", "").startswith("lmcache_ascend"), \
            f"{op} is LMCache's baseline, not lmcache_ascend's"
