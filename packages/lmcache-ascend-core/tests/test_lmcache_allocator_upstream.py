"""LMCache's own allocator tests (tests/v1/test_memory_management.py of the installed release)
run against PinnedArenaAllocator.

The file comes from the release's sdist at test time (tools/fetch_upstream_tests.py; the nox
session sets LMCACHE_UPSTREAM_TESTS). Which upstream tests apply, and why the others do not, is
listed in docs/allocator.md.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmcache.v1.memory_management")
from lmcache_ascend._lmcache_compat import GENERATION
from lmcache_ascend.memory import PinnedArenaAllocator as Arena

_dir = os.environ.get("LMCACHE_UPSTREAM_TESTS")
if not _dir:
    pytest.skip("LMCACHE_UPSTREAM_TESTS is not set (nox sets it)", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("lmcache_upstream_mm", Path(_dir) / "tests/v1/test_memory_management.py")
up = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(up)


def from_tensor(buffer: torch.Tensor, *args, **kwargs):
    """Upstream builds TensorMemoryAllocator(tensor); ours owns its memory, of the same size."""
    return Arena(buffer.numel())


@pytest.fixture
def as_upstream_classes(monkeypatch):
    """Tests that name an upstream class in their body get ours under that name."""
    monkeypatch.setattr(up, "MixedMemoryAllocator", Arena)
    monkeypatch.setattr(up, "TensorMemoryAllocator", from_tensor)


def test_check_allocator():
    up.check_allocator(Arena(128 << 20), 128 << 20)


@pytest.mark.parametrize("use_paging", [False, True])
def test_device_allocators(use_paging):
    up.test_device_allocators(Arena, use_paging)


@pytest.mark.parametrize("name", ["test_inplace_modification", "test_boundary_alloc", "test_batched_alloc",
                                  "test_mixed_alloc"])
def test_per_class(name):
    getattr(up, name)(Arena)


def test_tensor_allocator_unpaged(as_upstream_classes):
    up.test_tensor_allocator(False)


if GENERATION == 5:
    @pytest.mark.parametrize("name", ["test_mixed_allocator_owns_returned_tensor_object",
                                      "test_byte_array_caches_ctypes_array_type",
                                      "test_tensor_allocator_zero_size_shape"])
    def test_named_class(name, as_upstream_classes):
        getattr(up, name)()

    @pytest.mark.parametrize("batch_size", [-1, -5])
    @pytest.mark.parametrize("allocated_pages", [0, 2, 4])
    def test_tensor_allocator_negative_batch_size(batch_size, allocated_pages, as_upstream_classes):
        up.test_tensor_allocator_negative_batch_size(batch_size, allocated_pages)

    def test_pin_timeout():
        up.test_pin_timeout(Arena, None, 360)

    LAZY = [n for n in dir(up.TestLazyMemoryAllocator) if n.startswith("test_")
            and n not in ("test_lazy_expansion_allows_larger_allocations",)]

    @pytest.mark.parametrize("name", LAZY)
    def test_interface_suite_of_the_lazy_allocator(name):
        """The interface checks of TestLazyMemoryAllocator; our pool is its final size from the start."""
        suite = up.TestLazyMemoryAllocator()
        method = getattr(suite, name)

        def make(init_size=None, final_size=None, **kwargs):
            return Arena(final_size, **kwargs)

        marks = getattr(method, "pytestmark", [])
        params = [m for m in marks if m.name == "parametrize"]
        if not params:
            method(make)
            return
        argname, values = params[0].args
        for value in values:
            method(make, **{argname: value})
