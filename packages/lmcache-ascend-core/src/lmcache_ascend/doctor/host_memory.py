"""Host memory as the KV pool will use it: RLIMIT_MEMLOCK, CAP_IPC_LOCK, huge pages, NUMA, and a trial
pool mapped, locked and (with a device registrar) registered the way LMCache's pool is."""
from __future__ import annotations

import contextlib
import re
import resource
import time
from pathlib import Path
from typing import Any

from lmcache_ascend.doctor import ascend
from lmcache_ascend.doctor.report import FAIL, INFO, OK, WARN, Check
from lmcache_ascend.doctor.sizes import KiB, MiB, human_bytes

DEFAULT_POOL_SIZE = 64 * MiB  # the trial pool: fast, and enough to see the lock and register steps fail
# Single registrations of about this size or more fail (LMCache-Ascend issue 242; the native
# registrar's kLargeRegistration says the same in its own messages).
LARGE_REGISTRATION = 200 * 10**9
# The native mlock failure (map_host in native/cpu/host_memory.cpp) ends with a generic fix after this
# separator. Its Status carries only a code and that text, so this is the one place that reads it.
NATIVE_FIX_SEPARATOR = ". Fix: "


def without_native_fix(message: str) -> str:
    """The native error's own account of the failure, without the generic fix it may end with (the
    doctor gives a fix specific to the step that failed)."""
    return message.partition(NATIVE_FIX_SEPARATOR)[0]


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else human_bytes(value)


def _memlock_fix(target: str) -> str:
    """How to raise RLIMIT_MEMLOCK to `target` (both memlock checks give it)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return (f"raise RLIMIT_MEMLOCK to {target}: `ulimit -l unlimited` in the shell that starts vLLM (without root "
            f"the soft limit can go up to the hard one, {_limit_text(hard)}); Docker: `--ulimit memlock=-1 "
            "--cap-add IPC_LOCK`; systemd: LimitMEMLOCK=infinity")


def check_memlock(host: ascend.Host, cap: bool) -> Check:
    from lmcache_ascend import memory

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    details = {"soft": None if soft == resource.RLIM_INFINITY else soft,
               "hard": None if hard == resource.RLIM_INFINITY else hard}
    text = memory.memlock_limit_description()
    if soft == resource.RLIM_INFINITY:
        return Check("host.memlock", OK, text, details=details)
    if cap:
        return Check("host.memlock", OK, f"{text}; CAP_IPC_LOCK lifts the limit", details=details)
    if host.registrar is not None or host.npus:
        return Check("host.memlock", WARN, f"{text}: pools registered with the NPU are locked, so they are "
                     f"capped at {_limit_text(soft)}", fix=_memlock_fix("LMCache's max_local_cpu_size or more"),
                     details=details)
    return Check("host.memlock", INFO, f"{text} (matters only for locked pools; the CPU backend does not lock)",
                 details=details)


def check_cap_ipc_lock(cap: bool) -> Check:
    return Check("host.cap_ipc_lock", INFO, "yes (locking ignores RLIMIT_MEMLOCK)" if cap
                 else "no (locking is bounded by RLIMIT_MEMLOCK)", details={"present": cap})


def check_huge_pages() -> Check:
    sizes = {}
    root = Path("/sys/kernel/mm/hugepages")
    for entry in root.glob("hugepages-*kB") if root.is_dir() else []:
        size_kib = int(entry.name[len("hugepages-"):-len("kB")])
        sizes[size_kib * KiB] = {key: _read_int(entry / key) for key in ("nr_hugepages", "free_hugepages")}
    sizes = dict(sorted(sizes.items()))
    thp = re.search(r"\[(\w+)\]", _read_text(Path("/sys/kernel/mm/transparent_hugepage/enabled")) or "")
    thp_mode = thp.group(1) if thp else None  # the bracketed word is the mode in effect
    from lmcache_ascend import memory

    free_default = memory.huge_pages_free()  # HugePages_Free: pages of the default huge page size
    details = {"default_size_free": None if free_default < 0 else free_default, "transparent": thp_mode,
               "sizes": {str(size): counts for size, counts in sizes.items()}}
    reserved = "; ".join(f"{human_bytes(size)} pages: {c['nr_hugepages']} reserved, {c['free_hugepages']} free"
                         for size, c in sizes.items()) or "no huge page sizes listed"
    return Check("host.huge_pages", INFO, f"{reserved}; transparent huge pages: {thp_mode or 'unknown'} "
                 "(HostPool(huge_pages=True) needs reserved 2 MiB pages)", details=details)


def check_numa() -> Check:
    from lmcache_ascend import memory

    nodes = memory.numa_node_count()
    text = f"{nodes} NUMA node(s)"
    if nodes > 1:
        text += ": bind the pool to the NPU's node with HostPool(numa_node=N) / alloc_pinned_numa_ptr"
    return Check("host.numa", INFO, text, details={"nodes": nodes})


def check_pool(host: ascend.Host, size: int, cap: bool) -> Check:
    """Map, lock and (with a device registrar) register `size` bytes the way the KV pool does, then free."""
    from lmcache_ascend import memory

    register = host.registrar is not None
    device = ascend.TRIAL_DEVICE
    details: dict[str, Any] = {"size": size, "locked": False, "registered": False, "stage": None, "error": None,
                               "seconds": None}
    # One step at a time, so a failure names its cause: mapping (RAM), locking (memlock), registering (NPU).
    steps = [("map", False, False), ("lock", True, False)] + ([("register", True, True)] if register else [])
    start = time.perf_counter()
    for stage, lock, reg in steps:
        with ascend.npu_current(host.env, device) if reg else contextlib.nullcontext() as no_device:
            if no_device:
                details["stage"], details["error"] = "device", no_device
                return Check("host.pool", FAIL, f"{human_bytes(size)} pool, register step: could not make NPU "
                             f"{device} current: {no_device}", fix=_pool_fix("device", size, cap),
                             details=details)
            try:
                pool = memory.HostPool(size, lock=lock, register=reg)
            except (MemoryError, RuntimeError, ValueError, OSError) as exc:
                details["stage"], details["error"] = stage, str(exc)
                failure = without_native_fix(str(exc))
                # Only NPU registration needs locked pages: without an NPU the CPU backend runs unlocked.
                status = WARN if stage == "lock" and host.npus == 0 else FAIL
                if status == WARN:
                    failure += "; no NPU here, so the CPU backend runs with an unlocked pool"
                return Check("host.pool", status, f"{human_bytes(size)} pool, {stage} step: {failure}",
                             fix=_pool_fix(stage, size, cap), details=details)
            details["locked"], details["registered"] = pool.locked, pool.registered
            pool.close()  # an empty pool unregisters and unlocks here, before the NPU is released
            del pool
    details["seconds"] = round(time.perf_counter() - start, 3)
    done = f"mapped, locked and registered with NPU {device} ({host.registrar})" if register else \
        "mapped and locked (no device registrar, so not registered)"
    return Check("host.pool", OK, f"{human_bytes(size)}: {done} in {details['seconds']:.2f} s, then freed",
                 details=details)


def _pool_fix(stage: str, size: int, cap: bool) -> str:
    smaller = "or use a smaller pool (LMCache's max_local_cpu_size)"
    if stage == "map":
        return f"free host memory {smaller}"
    if stage == "lock":
        if cap:
            return f"the kernel refused even with CAP_IPC_LOCK: free host memory {smaller}"
        return f"{_memlock_fix(f'at least {human_bytes(size)}')}; {smaller}"
    if stage == "device":
        return ("check the NPUs with `npu-smi info`; in a container pass the NPU devices (/dev/davinci<N>, "
                "/dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc) and mount /usr/local/Ascend/driver")
    fix = (f"registration needs Ascend driver >= {ascend.MIN_DRIVER_TEXT} and, in a container, IPC_LOCK "
           "(`--cap-add IPC_LOCK`) or --privileged")
    if size > LARGE_REGISTRATION:
        fix += "; single registrations above ~200 GB fail: split the pool or make it smaller"
    return f"{fix}; {smaller}"


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text and text.strip().isdigit() else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
