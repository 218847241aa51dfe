"""Make LMCache's CPU device ops bind lmcache_ascend.ops, as its NPU device ops already do.

Why: LMCache 0.5's `CpuDeviceOps.ensure_native` is the base no-op, so on the CPU every kernel of
  multiprocess mode and of the in-process engine runs LMCache's torch baseline. Its
  `lmcache.device_plugins` entry points cannot replace the built-in "cpu" spec (the first spec of
  a backend name wins), and a second "cpu" spec that reports itself available also replaces
  `lmcache.torch_dev` (StubCPUDevice) with torch.cpu, which lacks what LMCache calls on it.
How: `CpuDeviceOps.ensure_native` binds lmcache_ascend.ops with LMCache's own `bind_native`, once per
  ops instance, and logs it. Applied from our device-plugin entry point, which LMCache loads in every
  process that imports it (vLLM workers, `lmcache server`) before it builds any device ops.
  LMCACHE_ASCEND_LMCACHE_CPU_OPS=0 leaves LMCache's torch baseline in place. The first call is also
  where patch_lmcache_cpu_kv_shm is applied: LMCache is initialised far enough by then to import
  its shm module (at plugin-load time that import is circular).
Versions: LMCache 0.5.x (checked against 0.5.6 and 0.5.7rc2); 0.3.x has no DeviceOps.
Remove when: LMCache lets a device plugin supply the CPU's native module (an ensure_native hook or
  plugin precedence over built-in specs).
"""
from __future__ import annotations

import os

_MARK = "_lmcache_ascend_patched"


def apply() -> None:
    """Patch once (idempotent: engine sub-processes re-import)."""
    from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps

    if getattr(CpuDeviceOps.ensure_native, _MARK, False):
        return
    from lmcache.logging import init_logger

    logger = init_logger("lmcache_ascend")

    def ensure_native(self) -> None:
        if self._native_bound:
            return
        self._native_bound = True
        from lmcache_ascend.patches import patch_lmcache_cpu_kv_shm

        patch_lmcache_cpu_kv_shm.apply()
        if os.environ.get("LMCACHE_ASCEND_LMCACHE_CPU_OPS", "1").strip() == "0":
            return
        import lmcache_ascend.ops as native

        self.bind_native(native)
        names = sorted(n for n in vars(self) if not n.startswith("_"))
        logger.info("lmcache-ascend: LMCache's cpu device ops run lmcache_ascend.ops (%d names bound) in pid %d",
                    len(names), os.getpid())

    setattr(ensure_native, _MARK, True)
    CpuDeviceOps.ensure_native = ensure_native
