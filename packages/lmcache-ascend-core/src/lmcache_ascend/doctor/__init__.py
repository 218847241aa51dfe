"""`lmcache-ascend doctor`: what this host offers lmcache-ascend, and what to fix.

Every check is one result with a status (ok / warn / fail / info) and, for each warn or fail, the fix.
Versions of torch, vLLM, LMCache and MindSpore come from package metadata: none of them is imported.
The native bindings (lmcache_ascend.memory, lmcache_ascend._native.transfer) are imported inside the
checks: a broken install must be a failed check with its fix, not a traceback before any.

Modules: report (Check and the text / JSON renderings), sizes, matrix (installed versions against
_matrix.json), install (this wheel and the packages around it), ascend (NPUs, CANN, driver, SoC,
backend, registrar), host_memory (memlock, CAP_IPC_LOCK, huge pages, NUMA, the trial pool), plugins
(checks other wheels register under the `lmcache_ascend.doctor_checks` entry-point group).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from lmcache_ascend.doctor.report import FAIL, INFO, OK, STATUSES, WARN, Check, counts, exit_status, to_json, to_text
from lmcache_ascend.doctor.sizes import SIZE_HELP, human_bytes, parse_size
from lmcache_ascend.doctor.matrix import (COMPONENTS, ROW_CHECKED, ROW_STATUSES, check_matrix, check_matrix_file,
                                          installed_versions, load_matrix, version_matches)
from lmcache_ascend.doctor import ascend, host_memory, install
from lmcache_ascend.doctor.host_memory import DEFAULT_POOL_SIZE

__all__ = ["FAIL", "INFO", "OK", "STATUSES", "WARN", "Check", "counts", "exit_status", "to_json", "to_text",
           "SIZE_HELP", "human_bytes", "parse_size", "COMPONENTS", "ROW_CHECKED", "ROW_STATUSES", "check_matrix",
           "check_matrix_file", "installed_versions", "load_matrix", "version_matches", "DEFAULT_POOL_SIZE",
           "run", "main"]


def run(pool_size: int = DEFAULT_POOL_SIZE, matrix: str | Path | None = None,
        env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in report order (without the native bindings, the host memory checks are left out)."""
    env = os.environ if env is None else env
    native_error = install.native_import_error()
    host = ascend.gather(env, native_error)
    installed = installed_versions()
    checks = [
        install.check_install(),
        ascend.check_npus(host),
        ascend.check_toolkit(host),
        ascend.check_driver(host),
        ascend.check_soc(host),
        install.check_cpu_backend(native_error),
        ascend.check_ascend_backend(host),
        *([ascend.check_registrar(host)] if native_error is None else []),  # host memory registration
        *install.check_packages(installed, toolkit_found=host.toolkit is not None, env=env),
        check_matrix_file(installed, matrix),
    ]
    if native_error is not None:
        return checks
    from lmcache_ascend import memory

    cap = memory.has_cap_ipc_lock()
    return checks + [
        host_memory.check_memlock(host, cap),
        host_memory.check_cap_ipc_lock(cap),
        host_memory.check_huge_pages(),
        host_memory.check_numa(),
        host_memory.check_pool(host, pool_size, cap),
    ]


def main(pool_size: int = DEFAULT_POOL_SIZE, matrix: str | Path | None = None, as_json: bool = False) -> int:
    checks = run(pool_size, matrix)
    print(to_json(checks) if as_json else to_text(checks))
    return exit_status(checks)
