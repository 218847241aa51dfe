"""LMCache >= 0.5 binds lmcache_ascend.ops into its CPU device ops in every process that imports it,
through our `lmcache.device_plugins` entry point (patches/patch_lmcache_cpu_device_ops.py). Each
check runs a fresh interpreter: the binding happens at `import lmcache`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmcache.v1.platform.devices.cpu.device_ops", reason="needs LMCache >= 0.5")

PROBE = """
import json, os
for module in filter(None, os.environ.get("PROBE_IMPORT_FIRST", "").split(",")):
    __import__(module)
import lmcache
from lmcache.v1.platform import get_device_spec
ops = lmcache.device_ops
print("PROBE " + json.dumps({
    "ops": type(ops).__name__,
    "bound": {n: getattr(v, "__module__", "") for n, v in vars(ops).items() if not n.startswith("_")},
    "torch_dev": type(lmcache.torch_dev).__name__,
    "spec": get_device_spec("cpu").backend_name,
}))
"""


def probe(**env):
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), run.stdout + run.stderr


@pytest.mark.parametrize("first", ["", "lmcache_ascend.ops", "lmcache_ascend.c_ops"],
                         ids=["lmcache-first", "ops-first", "c_ops-first"])
def test_every_kernel_of_lmcaches_cpu_ops_is_ours(first):
    """Whichever is imported first: importing ours first once made LMCache bind our half-imported
    module, i.e. none of our kernels."""
    import lmcache_ascend.ops

    result, output = probe(PROBE_IMPORT_FIRST=first)
    assert result["ops"] == "CpuDeviceOps" and result["spec"] == "cpu"  # LMCache's own CPU spec stays
    assert result["torch_dev"] == "StubCPUDevice"  # and its CPU device stub
    ops = lmcache_ascend.ops
    functions = {n for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n))
                 and not isinstance(getattr(ops, n), type)}
    assert "multi_layer_block_kv_transfer" in functions
    for name in functions:
        assert result["bound"].get(name, "").startswith("lmcache_ascend."), f"{name} is not bound to ours"
    assert "LMCache's cpu device ops run lmcache_ascend.ops" in output  # the log line of every process


def test_switched_off_keeps_lmcaches_torch_baseline():
    result, output = probe(LMCACHE_ASCEND_LMCACHE_CPU_OPS="0")
    assert result["bound"] == {} and "run lmcache_ascend.ops" not in output


def test_the_entry_point_is_registered_and_never_selected():
    from importlib.metadata import entry_points

    from lmcache.v1.platform.devices.cpu import CpuDeviceSpec

    [ep] = [e for e in entry_points(group="lmcache.device_plugins") if e.name == "lmcache_ascend_cpu"]
    spec_cls = ep.load()
    assert issubclass(spec_cls, CpuDeviceSpec)
    spec = spec_cls()
    assert spec.backend_name == ep.name and spec.device_type == "cpu" and not spec.is_available()


MIGRATE = """
import os, signal, sys, time, torch, lmcache
from lmcache.v1.platform.devices.cpu.shm import migrate_to_shm_and_wrap
kv = torch.zeros(4, 4096)
print("SEGMENT " + migrate_to_shm_and_wrap(kv).shm_name, flush=True)
sys.stdin.readline()  # the test looks at /dev/shm while this process lives
{end}
"""


@pytest.mark.parametrize("end", ["os._exit(0)", "os.kill(os.getpid(), signal.SIGKILL)", "sys.exit(0)"],
                         ids=["os._exit", "SIGKILL", "normal exit"])
def test_a_kv_cache_moved_to_shared_memory_is_unlinked_however_its_process_ends(end):
    """LMCache's lmcache-driven mode moves a CPU KV cache into /dev/shm/lmcache_kv_<pid>_<n>
    (patches/patch_lmcache_cpu_kv_shm.py)."""
    import time
    from pathlib import Path

    with subprocess.Popen([sys.executable, "-c", MIGRATE.format(end=end)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        line = next(x for x in proc.stdout if x.startswith("SEGMENT "))
        segment = Path("/dev/shm") / line.split()[1].lstrip("/")
        assert segment.exists()  # alive: the server may still map it by name
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while segment.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not segment.exists(), f"{segment} was left behind"
