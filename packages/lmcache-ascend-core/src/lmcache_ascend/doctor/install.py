"""This wheel itself: where it is installed, whether its native bindings load, and the packages
around it (versions, sibling wheels of another release, torch / torch-npu pairing, and the checks
other wheels register under the `lmcache_ascend.doctor_checks` entry-point group)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Mapping

import lmcache_ascend
from lmcache_ascend import envs
from lmcache_ascend.doctor import plugins
from lmcache_ascend.doctor.matrix import Installed, dist_version, release
from lmcache_ascend.doctor.report import FAIL, INFO, OK, WARN, Check

NATIVE_DIR = Path(lmcache_ascend.__file__).parent / "_native"
CPU_LIBRARY = "liblmcache_ascend_cpu.so"
ASCEND_LIBRARY = "liblmcache_ascend_npu.so"
# The lmcache-ascend wheels are released together: a different version is a stale install.
SIBLING_WHEELS = ("lmcache-ascend-vllm", "lmcache-ascend-ms")  # the packages/ directory names
# Reinstalling the core (docs/faq.md); --no-cache-dir: pip would reuse a wheel it built before (CPU-only).
REINSTALL_CORE = ("`pip install --force-reinstall --no-deps --no-cache-dir ./packages/lmcache-ascend-core` (from a "
                  "checkout) or `pip install --force-reinstall --no-cache-dir --no-binary lmcache-ascend-core "
                  "lmcache-ascend-core` (from an index)")


def check_install() -> Check:
    where = Path(lmcache_ascend.__file__).parent
    text = (f"lmcache-ascend {lmcache_ascend.__version__}, Python {platform.python_version()} "
            f"({platform.system()} {platform.machine()}), {where}")
    details = {"version": lmcache_ascend.__version__, "python": platform.python_version(),
               "machine": platform.machine(), "path": str(where), "error": None}
    try:  # what the kernels read when they load (lmcache_ascend.transfer): it would stop LMCache there
        envs.num_threads()
    except ValueError as exc:
        details["error"] = str(exc)
        return Check("install", FAIL, f"{text}; {exc}", details=details,
                     fix="set LMCACHE_ASCEND_NUM_THREADS to an integer >= 0 (0: one thread per usable core) "
                     "or unset it")
    return Check("install", OK, text, details=details)


def native_import_error() -> str | None:
    """Why the native bindings do not load (None when they do): a damaged or foreign-platform install."""
    try:
        from lmcache_ascend import memory  # noqa: F401  (loads both bindings and the CPU library)
        from lmcache_ascend._native import transfer  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_cpu_backend(native_error: str | None) -> Check:
    library = NATIVE_DIR / CPU_LIBRARY
    if not library.is_file():  # the bindings link to it, so this means a damaged install
        return Check("backend.cpu", FAIL, f"{library} is missing; the host memory checks are skipped",
                     fix=f"reinstall: {REINSTALL_CORE}", details={"library": None, "error": native_error})
    if native_error is not None:
        return Check("backend.cpu", FAIL, f"{library} is there but the native bindings do not load: {native_error}; "
                     "the host memory checks are skipped", fix=f"reinstall: {REINSTALL_CORE}",
                     details={"library": str(library), "error": native_error})
    return Check("backend.cpu", OK, f"built ({library})", details={"library": str(library), "error": None})


def check_packages(installed: Installed, toolkit_found: bool, env: Mapping[str, str]) -> list[Check]:
    """One line with every version, then a warning for each pairing known to break and what the
    registered checks of other wheels report."""
    siblings = {dist: dist_version(dist) for dist in SIBLING_WHEELS}
    have = [f"{c} {v[1]}" + (f" ({v[0]})" if v[0].replace("-", "_") != c else "")
            for c, v in installed.items() if v is not None]
    have += [f"{dist} {v}" for dist, v in siblings.items() if v is not None]
    missing = [c for c, v in installed.items() if v is None]
    parts = ([", ".join(have)] if have else []) + (["not installed: " + ", ".join(missing)] if missing else [])
    details: dict[str, Any] = {c: None if v is None else {"dist": v[0], "version": v[1]}
                               for c, v in installed.items()}
    details.update({dist.replace("-", "_"): None if v is None else {"dist": dist, "version": v}
                    for dist, v in siblings.items()})
    checks = [Check("packages", INFO, "; ".join(parts), details=details)]

    npu, torch = installed.get("torch_npu"), installed.get("torch")
    if npu is not None and not toolkit_found:
        checks.append(Check("package.torch_npu", WARN, f"torch-npu {npu[1]} is installed but no CANN toolkit is: "
                            "torch autoloads torch_npu, so `import torch` fails",
                            fix="uninstall torch-npu on hosts without CANN (or set TORCH_DEVICE_BACKEND_AUTOLOAD=0), "
                            "or source CANN's set_env.sh", details={"torch_npu": npu[1], "toolkit": None}))
    elif npu is not None and torch is not None and release(torch[1])[0][:3] != release(npu[1])[0][:3]:
        torch_release = ".".join(map(str, release(torch[1])[0][:3]))
        checks.append(Check("package.torch_npu", WARN, f"torch-npu {npu[1]} does not pair with torch {torch[1]}",
                            fix=f"install the torch-npu release built for torch {torch_release} (torch-npu "
                            f"{torch_release}.*), or the torch that torch-npu {npu[1]} was built for",
                            details={"torch_npu": npu[1], "torch": torch[1]}))
    checks.extend(plugins.registered_checks(env))
    for dist, version in siblings.items():
        if version is not None and version != lmcache_ascend.__version__:
            checks.append(Check(f"package.{dist.replace('-', '_')}", WARN, f"{dist} {version} beside "
                                f"lmcache-ascend-core {lmcache_ascend.__version__}",
                                fix=f"install matching releases: pip install {dist}=={lmcache_ascend.__version__}",
                                details={"version": version, "core": lmcache_ascend.__version__}))
    return checks
