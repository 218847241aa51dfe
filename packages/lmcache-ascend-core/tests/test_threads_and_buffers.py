"""Thread pool behaviour, fork safety, and non-torch inputs (buffer protocol, DLPack)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import lmcache_ascend
import lmcache_ascend.ops as ops
from kvref import ref_gather, same
from ops_cases import BS, NB, NT, ops_case

D2H = 1


@pytest.fixture
def restore_threads():
    yield
    lmcache_ascend.set_num_threads(0)


def gather(layers, slots, kv):
    ops.multi_layer_kv_transfer(kv, layers, slots, "cpu", NB * BS, D2H, 1, BS)
    return kv


def test_default_thread_count_is_usable_cores(restore_threads):
    lmcache_ascend.set_num_threads(0)
    assert lmcache_ascend.get_num_threads() == lmcache_ascend.usable_cpu_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_results_do_not_depend_on_thread_count(threads, restore_threads):
    lmcache_ascend.set_num_threads(threads)
    assert lmcache_ascend.get_num_threads() == threads
    _, layers, slots, kv = ops_case(1)
    big = torch.zeros(2, 3, NT, kv.shape[-1], dtype=kv.dtype)
    assert same(gather(layers, slots, big), ref_gather("flash_attn", layers, slots, torch.zeros_like(big)))


def test_concurrent_callers_share_the_pool(restore_threads):
    lmcache_ascend.set_num_threads(2)
    _, layers, slots, kv = ops_case(1)
    expected = ref_gather("flash_attn", layers, slots, torch.zeros_like(kv))
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(same(gather(layers, slots, torch.zeros_like(kv)), expected))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and all(results)


def test_forked_child_gets_a_working_pool(restore_threads):
    # vLLM forks engine workers; a child inherits no worker threads but must still transfer.
    lmcache_ascend.set_num_threads(2)
    _, layers, slots, kv = ops_case(1)
    gather(layers, slots, torch.zeros_like(kv))  # start the parent's workers
    expected = ref_gather("flash_attn", layers, slots, torch.zeros_like(kv))
    pid = os.fork()
    if pid == 0:  # child: exit code tells the parent whether the transfer worked
        ok = lmcache_ascend.get_num_threads() == 2 and same(gather(layers, slots, torch.zeros_like(kv)), expected)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_numpy_buffers_work_without_torch_tensors():
    _, layers, slots, kv = ops_case(1, torch.float16)
    np_layers = [t.numpy() for t in layers]
    out = np.zeros(kv.shape, dtype=np.float16)
    ops.multi_layer_kv_transfer(out, np_layers, slots.numpy(), "cpu", NB * BS, D2H, 1, BS)
    assert same(torch.from_numpy(out), ref_gather("flash_attn", layers, slots, torch.zeros_like(kv)))


class DLPackOnly:
    """An object that offers its memory through DLPack alone (like MindSpore or CuPy tensors)."""

    def __init__(self, tensor):
        self._t = tensor

    def __dlpack__(self, **kwargs):
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_dlpack_producers_are_accepted():
    _, layers, slots, kv = ops_case(1)
    out = torch.zeros_like(kv)
    ops.multi_layer_kv_transfer(DLPackOnly(out), [DLPackOnly(t) for t in layers], DLPackOnly(slots), "cpu",
                                NB * BS, D2H, 1, BS)
    assert same(out, ref_gather("flash_attn", layers, slots, torch.zeros_like(kv)))


def test_objects_without_memory_are_rejected_by_name():
    _, layers, slots, kv = ops_case(1)
    with pytest.raises(TypeError, match="key_value: expected a torch tensor, a DLPack producer or a buffer"):
        ops.multi_layer_kv_transfer(object(), layers, slots, "cpu", NB * BS, D2H, 1, BS)


@pytest.mark.parametrize("value,expected", [("1", 1), ("3", 3), ("0", None), ("", None)])
def test_thread_count_from_environment(value, expected):
    code = "import lmcache_ascend as m; print(m.get_num_threads(), m.usable_cpu_count())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LMCACHE_ASCEND_NUM_THREADS": value},
                         capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == (expected if expected is not None else int(out[1]))


def test_invalid_thread_count_names_the_variable():
    # Checked where the kernels load (LMCache imports ops), not on `import lmcache_ascend`: the doctor reports it.
    proc = subprocess.run([sys.executable, "-c", "import lmcache_ascend.ops"], capture_output=True, text=True,
                          env={**os.environ, "LMCACHE_ASCEND_NUM_THREADS": "many"})
    assert proc.returncode != 0 and "LMCACHE_ASCEND_NUM_THREADS='many' is invalid" in proc.stderr
