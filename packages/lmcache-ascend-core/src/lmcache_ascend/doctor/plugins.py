"""Checks other wheels add to the doctor, so the core needs no knowledge of their frameworks.

A wheel declares entry points in the group `lmcache_ascend.doctor_checks`; each names a callable that
takes the environment (a mapping like os.environ) and returns an iterable of report.Check (empty when
it has nothing to say). They run in entry-point name order, after the core's package checks.
"""
from __future__ import annotations

import importlib.metadata
from typing import Mapping

import lmcache_ascend
from lmcache_ascend.doctor.report import WARN, Check

GROUP = "lmcache_ascend.doctor_checks"


def registered_checks(env: Mapping[str, str]) -> list[Check]:
    out: list[Check] = []
    for entry in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = entry.dist.name if entry.dist is not None else None
        try:
            found = list(entry.load()(env))
            wrong = next((c for c in found if not isinstance(c, Check)), None)
            if wrong is not None:
                raise TypeError(f"it returned {wrong!r}, not a lmcache_ascend.doctor.report.Check")
        except Exception as exc:  # a broken wheel must be one finding in the report, not a traceback before it
            reinstall = (f"pip install --force-reinstall {dist}=={lmcache_ascend.__version__}" if dist else
                         f"reinstall the package that declares {entry.value}")
            out.append(Check(f"plugin.{entry.name}", WARN, f"the doctor check {entry.value} "
                             f"({dist or 'unknown package'}) failed: {type(exc).__name__}: {exc}",
                             fix=f"install the release matching lmcache-ascend-core: {reinstall}",
                             details={"entry_point": entry.value, "dist": dist, "error": f"{type(exc).__name__}: {exc}"}))
            continue
        out.extend(found)
    return out
