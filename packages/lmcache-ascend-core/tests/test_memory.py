"""The native host pool and the alloc_pinned_ptr family."""
from __future__ import annotations

import inspect
import logging
import random
import shutil
import subprocess
import sys
import threading

import pytest
import torch

import lmcache_ascend.c_ops as c_ops
import lmcache_ascend.ops as ops
from lmcache_ascend.memory import HostPool

MiB = 1 << 20


def test_allocations_are_aligned_disjoint_and_writable():
    pool = HostPool(16 * MiB)
    addrs = [pool.allocate(s) for s in (1, 4095, 4096, 4097, 100_000)]
    assert all(a % 4096 == 0 for a in addrs)
    spans = sorted((a, a + pool.allocation_size(a)) for a in addrs)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    for i, a in enumerate(addrs):
        pool.tensor(a, 4096).fill_(i)
    assert [int(pool.tensor(a, 4096)[0]) for a in addrs] == list(range(5))


def test_free_coalesces_back_to_one_block():
    pool = HostPool(8 * MiB)
    addrs = [pool.allocate(MiB) for _ in range(8)]
    assert pool.allocate(1) is None  # full
    for a in random.Random(0).sample(addrs, len(addrs)):
        pool.free(a)
    s = pool.stats()
    assert (s["free_blocks"], s["largest_free"], s["used"], s["fragmentation"]) == (1, 8 * MiB, 0, 0.0)


def test_stats_track_fragmentation():
    pool = HostPool(4 * MiB)
    a, b, c, d = (pool.allocate(MiB) for _ in range(4))
    pool.free(a)
    pool.free(c)
    s = pool.stats()
    assert s["allocations"] == 2 and s["used"] == 2 * MiB and s["free_blocks"] == 2
    assert s["largest_free"] == MiB and s["fragmentation"] == pytest.approx(0.5)
    assert pool.allocate(2 * MiB) is None  # 2 MiB free, but not in one piece


def test_exhausted_pool_returns_none_and_recovers():
    pool = HostPool(4 * MiB)
    addrs = pool.allocate_batch(MiB, 4)
    assert pool.allocate(4096) is None and pool.allocate_batch(4096, 1) is None
    pool.free(addrs[0])
    assert pool.allocate(MiB) == addrs[0]


def test_batched_allocation_is_contiguous_when_possible_and_all_or_nothing():
    pool = HostPool(8 * MiB)
    addrs = pool.allocate_batch(MiB // 2, 6)
    assert addrs == [addrs[0] + i * (MiB // 2) for i in range(6)]
    before = pool.stats()
    assert pool.allocate_batch(MiB, 6) is None  # 5 MiB free: all or nothing
    assert pool.stats() == before
    pool.free_batch(addrs[::2])  # now only scattered holes of 0.5 MiB + the 5 MiB tail
    scattered = pool.allocate_batch(MiB // 2, 13)
    assert scattered is not None and len(set(scattered)) == 13


@pytest.mark.parametrize("size", [0, -1, 5 * MiB, 1.5, True])
def test_bad_sizes_raise_and_leave_the_pool_unchanged(size):
    pool = HostPool(4 * MiB)
    pool.allocate(MiB)
    before = pool.stats()
    with pytest.raises(ValueError, match="size"):
        pool.allocate(size)
    assert pool.stats() == before


def test_double_free_and_foreign_pointers_raise_and_leave_the_pool_unchanged():
    pool = HostPool(4 * MiB)
    a, b = pool.allocate(4096), pool.allocate(4096)
    pool.free(a)
    before = pool.stats()
    for bad in (a, b + 8, pool.base + 4 * MiB, 12345):
        with pytest.raises(ValueError, match="not allocated by this pool or is already freed"):
            pool.free(bad)
    with pytest.raises(ValueError, match="already freed"):
        pool.free_batch([b, b])  # b is live, but a batch must not free it twice
    assert pool.stats() == before


def test_bad_pool_options_are_named():
    with pytest.raises(ValueError, match="size_bytes=0"):
        HostPool(0)
    with pytest.raises(ValueError, match="alignment=1000"):
        HostPool(MiB, alignment=1000)
    with pytest.raises(ValueError, match="numa_node=4096 does not exist"):
        HostPool(MiB, numa_node=4096)
    with pytest.raises(MemoryError, match="RAM"):
        HostPool(1 << 50)
    with pytest.raises(ValueError, match="lock='yes'"):
        HostPool(MiB, lock="yes")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop CAP_IPC_LOCK")
def test_mlock_failure_names_limit_capability_and_fix():
    # A child without CAP_IPC_LOCK and with a 64 KiB RLIMIT_MEMLOCK, as in a default container.
    code = ("import resource; resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))\n"
            "from lmcache_ascend.memory import HostPool\n"
            "try:\n    HostPool(256 << 20, lock=True)\nexcept MemoryError as e:\n    print(e)\n")
    out = subprocess.run(["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert "mlock of 256.0 MiB failed" in out
    assert "RLIMIT_MEMLOCK = 64.0 KiB (soft) / 64.0 KiB (hard)" in out
    assert "CAP_IPC_LOCK: no" in out and "--cap-add IPC_LOCK" in out


def test_locked_pool_reports_locked_and_unregistered_without_a_device():
    pool = HostPool(4 * MiB, lock=True)
    assert pool.locked and not pool.registered


def test_pool_is_thread_safe():
    pool = HostPool(64 * MiB)
    errors = []

    def churn(seed):
        rng = random.Random(seed)
        live = []
        try:
            for _ in range(3000):
                if live and rng.random() < 0.5:
                    pool.free(live.pop(rng.randrange(len(live))))
                else:
                    a = pool.allocate(rng.choice([4096, 65536, 300_000]))
                    if a is not None:
                        live.append(a)
            pool.free_batch(live)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert pool.stats()["used"] == 0 and pool.stats()["free_blocks"] == 1


def test_closing_with_live_allocations_is_reported_and_views_stay_valid(caplog):
    pool = HostPool(4 * MiB)
    a = pool.allocate(4096)
    view = pool.tensor(a, 4096)
    view.fill_(3)
    with caplog.at_level(logging.WARNING, logger="lmcache_ascend.memory"):
        assert pool.close() == 1
    assert "1 live allocation" in caplog.text
    with pytest.raises(ValueError, match="closed"):
        pool.allocate(1)
    del pool
    assert int(view.sum()) == 3 * 4096  # still mapped: the view holds the pool


def test_closing_an_empty_pool_returns_its_pages():
    pool = HostPool(4 * MiB)
    pool.tensor(pool.allocate(MiB), MiB).fill_(1)
    pool.free(pool.base)
    whole = torch.frombuffer(pool.buffer(), dtype=torch.uint8)
    assert pool.close() == 0
    assert int(whole.sum()) == 0  # pages dropped, the range still mapped


def test_alloc_pinned_functions_have_lmcache_signatures_and_work():
    for mod in (ops, c_ops):
        ptr = mod.alloc_pinned_ptr(3 * 4096, 0)
        numa = mod.alloc_pinned_numa_ptr(4096, 0)
        assert ptr % 4096 == 0 and numa % 4096 == 0
        mod.free_pinned_ptr(ptr)
        mod.free_pinned_numa_ptr(numa, 4096)
        with pytest.raises(ValueError, match="already freed"):
            mod.free_pinned_ptr(ptr)
    assert list(inspect.signature(ops.alloc_pinned_numa_ptr).parameters) == ["size", "numa_id"]
    assert list(inspect.signature(ops.alloc_pinned_ptr).parameters) == ["size", "device_id"]
    assert list(inspect.signature(ops.free_pinned_numa_ptr).parameters) == ["ptr", "size"]


def test_pinned_memory_is_zeroed_and_usable():
    from lmcache_ascend.memory import pinned_mapping

    ptr = ops.alloc_pinned_ptr(1 << 16, 0)
    t = torch.frombuffer(pinned_mapping(ptr), dtype=torch.uint8)
    assert t.numel() == 1 << 16 and int(t.sum()) == 0
    t.fill_(1)
    ops.free_pinned_ptr(ptr)
    assert int(t.sum()) == 1 << 16  # the view keeps the mapping alive after free
