"""A pytest plugin (`-p device_ops_probe`) for running LMCache's own tests: it counts, per test, every
call of a DeviceOps name, split into ours (lmcache_ascend's, bound into LMCache's CPU device ops by
our device-plugin entry point) and LMCache's torch baseline, and writes the counts as JSON to
$LMCACHE_ASCEND_DEVICE_OPS_REPORT. Calls made in processes the tests spawn are not seen."""
from __future__ import annotations

import collections
import functools
import json
import os

import pytest

OUTSIDE = "<outside a test>"  # calls from LMCache's threads between tests
_calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_current = [OUTSIDE]
_not_ops = {"ensure_native", "bind_native"}


def _counted(kind: str, name: str, fn):
    @functools.wraps(fn)  # keeps __module__, and __wrapped__ for LMCache's inspect.signature checks
    def call(*args, **kwargs):
        _calls[_current[0]][f"{kind}:{name}"] += 1
        return fn(*args, **kwargs)

    return call


def pytest_configure(config):
    import lmcache  # noqa: F401  (loads our entry point, which patches CpuDeviceOps)
    from lmcache.v1.platform import resolve_device_ops
    from lmcache.v1.platform.base.device_ops import DeviceOps
    from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps

    for cls in (DeviceOps, CpuDeviceOps):  # the baseline: what an unbound name falls back to
        for name, fn in list(vars(cls).items()):
            if callable(fn) and not isinstance(fn, type) and not name.startswith("_") and name not in _not_ops:
                setattr(cls, name, _counted("baseline", name, fn))
    ops = resolve_device_ops("cpu")
    for name, fn in list(vars(ops).items()):
        if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
            owner = getattr(fn, "__module__", "") or ""
            setattr(ops, name, _counted("ours" if owner.startswith("lmcache_ascend") else f"other({owner})", name, fn))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    yield
    _current[0] = OUTSIDE


def pytest_unconfigure(config):
    path = os.environ.get("LMCACHE_ASCEND_DEVICE_OPS_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({test: dict(counts) for test, counts in _calls.items()}, f, indent=1, sort_keys=True)
