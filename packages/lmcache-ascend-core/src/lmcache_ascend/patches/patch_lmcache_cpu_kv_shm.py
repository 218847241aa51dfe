"""Remove the POSIX shared-memory segments LMCache moves a CPU KV cache into when their process dies.

Why: in LMCache's multiprocess mode with the lmcache-driven transfer mode, the vLLM worker moves its
  KV cache into `/dev/shm/lmcache_kv_<pid>_<n>` so the `lmcache server` can map it. LMCache unlinks
  the segment from a weakref finalizer, which never runs when the worker ends by a signal or
  `os._exit` (how vLLM stops its engine processes): the segment, as large as the KV cache, stays in
  /dev/shm until reboot.
How: wrap `shm_create_readwrite` in `lmcache.v1.platform.devices.cpu.shm` so every segment of that
  prefix is also told to a small reaper process started once per worker (in its own session, so a
  Ctrl-C to the group does not stop it first). The reaper waits for the worker's end of a pipe to
  close, which happens however the worker ends, then unlinks what is left. The server's mapping
  stays valid after the unlink; only the name goes. Applied by patch_lmcache_cpu_device_ops when
  LMCache builds its CPU device ops (the shm module cannot be imported earlier).
Versions: LMCache 0.5.6 and 0.5.7rc2 (`CpuShmTensorWrapper.SHM_NAME_PREFIX = "/lmcache_kv_"`).
Remove when: LMCache unlinks the segment once the server has mapped it, or reaps it itself.
"""
from __future__ import annotations

import subprocess
import sys
import threading

_MARK = "_lmcache_ascend_patched"
# Runs in the reaper: read segment names until the worker's end of the pipe closes, then unlink.
REAPER = """
import os, sys
names = [line.strip() for line in sys.stdin if line.strip()]
try:
    from _posixshmem import shm_unlink
except ImportError:
    shm_unlink = lambda name: os.unlink("/dev/shm/" + name.lstrip("/"))
for name in names:
    try:
        shm_unlink(name)
    except OSError:
        pass
"""
_reaper: subprocess.Popen | None = None
_lock = threading.Lock()


def _tell_reaper(name: str) -> None:
    global _reaper
    with _lock:
        if _reaper is None or _reaper.poll() is not None:
            _reaper = subprocess.Popen([sys.executable, "-c", REAPER], stdin=subprocess.PIPE, text=True,
                                       start_new_session=True, close_fds=True)
        _reaper.stdin.write(name + "\n")
        _reaper.stdin.flush()


def apply() -> None:
    from lmcache.v1.platform.devices.cpu import shm

    original = shm.shm_create_readwrite
    if getattr(original, _MARK, False):
        return
    prefix = shm.CpuShmTensorWrapper.SHM_NAME_PREFIX

    def shm_create_readwrite(name, *args, **kwargs):
        address = original(name, *args, **kwargs)
        if str(name).startswith(prefix):
            _tell_reaper(str(name))
        return address

    setattr(shm_create_readwrite, _MARK, True)
    shm.shm_create_readwrite = shm_create_readwrite
