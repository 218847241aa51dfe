"""PinnedArenaAllocator as LMCache sees it (runs with whichever LMCache generation is installed)."""
from __future__ import annotations

import gc
import threading

import pytest
import torch

lmcache = pytest.importorskip("lmcache.v1.memory_management")

from lmcache_ascend._lmcache_compat import GENERATION, MemoryFormat, MixedMemoryAllocator, TensorMemoryObj
from lmcache_ascend.memory import PinnedArenaAllocator

MiB = 1 << 20
SHAPE = torch.Size([2, 4, 256, 128])  # a KV_2LTD chunk: 2 x 4 layers x 256 tokens x 128
NBYTES = SHAPE.numel() * 2


def test_is_a_mixed_allocator_with_arena_backed_objects():
    alloc = PinnedArenaAllocator(16 * MiB)
    assert isinstance(alloc, MixedMemoryAllocator)
    obj = alloc.allocate(SHAPE, torch.float16)
    assert isinstance(obj, TensorMemoryObj) and obj.parent_allocator is alloc
    assert obj.tensor.shape == SHAPE and obj.tensor.dtype == torch.float16
    assert obj.data_ptr == alloc.pool.base + obj.meta.address and obj.data_ptr % 4096 == 0
    obj.tensor.fill_(2)
    assert int(alloc.buffer[obj.meta.address: obj.meta.address + NBYTES].view(torch.float16).float().sum()) == 2 * SHAPE.numel()
    alloc.close()


def test_ref_count_to_zero_frees_the_block():
    alloc = PinnedArenaAllocator(16 * MiB)
    obj = alloc.allocate(SHAPE, torch.float16)
    obj.ref_count_up()
    obj.ref_count_down()
    assert alloc.num_active_allocations == 1
    obj.ref_count_down()
    assert not obj.is_valid() and obj.tensor is None and alloc.num_active_allocations == 0
    assert alloc.memcheck()


def test_exhaustion_returns_none_and_recovers_after_frees():
    alloc = PinnedArenaAllocator(4 * NBYTES)
    objs = alloc.batched_allocate(SHAPE, torch.float16, 4)
    assert len(objs) == 4 and alloc.allocate(SHAPE, torch.float16) is None
    assert alloc.batched_allocate(SHAPE, torch.float16, 2) is None
    alloc.batched_free(objs[:2])
    assert len(alloc.batched_allocate(SHAPE, torch.float16, 2)) == 2


def test_free_is_idempotent_and_a_foreign_object_leaves_the_pool_unchanged():
    a, b = PinnedArenaAllocator(4 * MiB), PinnedArenaAllocator(4 * MiB)
    obj = a.allocate(SHAPE, torch.float16)
    a.free(obj)
    a.free(obj)  # upstream callers free twice; must be a no-op
    foreign = b.allocate(SHAPE, torch.float16)
    kept = a.allocate(SHAPE, torch.float16)
    before = a.pool.stats()
    with pytest.raises(ValueError, match="not allocated by this pool"):
        a.batched_free([kept, foreign])
    assert a.pool.stats() == before and kept.is_valid() and foreign.is_valid()


def test_binary_buffer_objects_come_from_lmcache_buffer_allocator():
    alloc = PinnedArenaAllocator(4 * MiB)
    obj = alloc.allocate(torch.Size([512, 0]), torch.uint8, MemoryFormat.BINARY_BUFFER)
    assert len(obj.byte_array) == 512 and alloc.num_active_allocations == 0
    with pytest.raises(ValueError, match="Unsupported memory format"):
        alloc.allocate(SHAPE, torch.float16, MemoryFormat.UNDEFINED)


def test_zero_size_and_unknown_options_raise():
    alloc = PinnedArenaAllocator(4 * MiB)
    with pytest.raises(ValueError, match="size must be greater than 0"):
        alloc.allocate(torch.Size([0]), torch.float16)
    with pytest.raises(TypeError, match="unknown option"):
        PinnedArenaAllocator(4 * MiB, hugepages=True)
    with pytest.raises(ValueError, match="power of two"):
        PinnedArenaAllocator(4 * MiB, align_bytes=3000)


def test_close_with_live_objects_is_reported_and_late_frees_are_harmless(caplog):
    alloc = PinnedArenaAllocator(4 * MiB)
    obj = alloc.allocate(SHAPE, torch.float16)
    obj.tensor.fill_(1)
    alloc.close()
    alloc.close()
    assert "1 live allocation" in caplog.text
    assert int(obj.tensor.float().sum()) == SHAPE.numel()  # still readable
    obj.ref_count_down()  # a free after close (as from __del__ during teardown) is a no-op
    del obj
    gc.collect()


def test_concurrent_allocate_and_free():
    alloc = PinnedArenaAllocator(64 * NBYTES)
    errors = []

    def churn():
        try:
            for _ in range(300):
                objs = alloc.batched_allocate(SHAPE, torch.float16, 4) or []
                one = alloc.allocate(SHAPE, torch.float16)
                alloc.batched_free(objs + ([one] if one is not None else []))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and alloc.num_active_allocations == 0 and alloc.memcheck()


@pytest.mark.skipif(GENERATION != 5, reason="several shapes per memory object exist in LMCache 0.5 only")
def test_several_shapes_in_one_object():
    alloc = PinnedArenaAllocator(4 * MiB)
    obj = alloc.allocate([torch.Size([2, 4]), torch.Size([3])], [torch.float16, torch.float32])
    assert obj.get_size() == 2 * 4 * 2 + 3 * 4 and obj.get_tensor(1).shape == torch.Size([3])


def test_freed_objects_are_revived_only_for_the_same_slice_and_layout():
    alloc = PinnedArenaAllocator(4 * MiB)
    first = alloc.allocate(SHAPE, torch.float16, MemoryFormat.KV_2LTD)
    first.meta.ref_count, first.meta.pin_count = 3, 2  # leftovers a revived object must not inherit
    alloc.free(first)
    again = alloc.allocate(SHAPE, torch.float16, MemoryFormat.KV_T2D)
    assert again is first  # same offset, same layout: the object starts a new lifetime
    assert again.is_valid() and again.meta.ref_count == 1 and again.meta.pin_count == 0
    assert again.get_memory_format() == MemoryFormat.KV_T2D
    alloc.free(again)
    other = alloc.allocate(torch.Size([2, 4, 128, 128]), torch.float16)
    assert other is not first and other.meta.address == first.meta.address and not first.is_valid()
    assert other.tensor.shape == torch.Size([2, 4, 128, 128])
