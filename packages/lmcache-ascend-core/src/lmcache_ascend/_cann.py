"""Where the Ascend software stack is on this host: CANN toolkit, SoC, driver, NPUs.

Standard library only: the wheel's build hook loads this file by path before the package is
installed (to decide whether to build the Ascend backend), and `lmcache-ascend doctor` and the
device registration import it at run time. Every function answers None / 0 instead of raising
when something is missing or unreadable; callers turn that into a message with the fix.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# Where the CANN installer puts things when nothing says otherwise.
DEFAULT_TOOLKIT_HOME = Path("/usr/local/Ascend/ascend-toolkit/latest")
DEFAULT_DRIVER_ROOT = Path("/usr/local/Ascend/driver")
# Set by CANN's set_env.sh (the first one set wins).
TOOLKIT_HOME_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_CANN_PACKAGE_PATH")

# Variables read here and by the build hook / device registration, with what each does.
ENV_VARS = {
    "ASCEND_HOME_PATH": "CANN toolkit root (set by CANN's set_env.sh); also ASCEND_TOOLKIT_HOME, "
                        "ASCEND_CANN_PACKAGE_PATH",
    "SOC_VERSION": "SoC the Ascend kernels are built for, e.g. Ascend910B3 (default: asked from npu-smi)",
    "LMCACHE_ASCEND_BACKEND": "build: auto (Ascend backend where CANN is found), cpu, or ascend (fail without CANN)",
    "LMCACHE_ASCEND_CXX11_ABI": "build: _GLIBCXX_USE_CXX11_ABI for the Ascend library, 0 or 1 "
                                "(default: the installed torch's, else 1)",
    "LMCACHE_ASCEND_ACL_LIB": "path of libascendcl.so for host-memory registration (default: searched)",
    "LMCACHE_ASCEND_HAL_LIB": "path of libascend_hal.so (default: the driver's lib64/driver/)",
    "LMCACHE_ASCEND_DSMI_LIB": "path of libdrvdsmi_host.so, to read the driver version (default: the driver's)",
    "ASCEND_RT_VISIBLE_DEVICES": "the NPUs this process sees (CANN's, read not set): registration through the "
                                 "driver (halHostRegister) maps the current NPU's index to its physical id with it",
}


@dataclass(frozen=True)
class CannToolkit:
    home: Path            # the toolkit root, e.g. /usr/local/Ascend/ascend-toolkit/latest
    version: str | None   # e.g. "8.1.RC1"; None when no version file could be read
    arch: str             # "x86_64" / "aarch64"

    @property
    def arch_dir(self) -> Path:
        return self.home / f"{self.arch}-linux"

    @property
    def platform_config_dir(self) -> Path:
        return self.arch_dir / "data" / "platform_config"

    @property
    def lib64(self) -> Path:
        return self.home / "lib64"


def _key_values(path: Path) -> dict[str, str]:
    """`key=value` lines of a small text file ({} if missing or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            out.setdefault(key.strip(), value.strip().strip('"'))
    return out


def _toolkit_version(home: Path, arch: str) -> str | None:
    version = _key_values(home / f"{arch}-linux" / "ascend_toolkit_install.info").get("version")
    if version:
        return version
    # version.cfg lines look like toolkit_running_version=[7.7.0.1.238:8.1.RC1] (inner:release).
    cfg = _key_values(home / "version.cfg")
    for key in ("toolkit_running_version", "runtime_running_version"):
        match = re.fullmatch(r"\[[^:\]]*:([^\]]+)\]", cfg.get(key, ""))
        if match:
            return match.group(1).strip()
    return None


def _looks_like_toolkit(home: Path, arch: str) -> bool:
    return (home / f"{arch}-linux").is_dir() or (home / "lib64" / "libascendcl.so").is_file()


def find_cann_toolkit(env: Mapping[str, str] = os.environ, *, arch: str | None = None) -> CannToolkit | None:
    """The CANN toolkit named by ASCEND_HOME_PATH (or ASCEND_TOOLKIT_HOME / ASCEND_CANN_PACKAGE_PATH),
    else the default install path; None when that directory is not a toolkit. A variable that is set
    is trusted: a wrong value gives None rather than silently using another install."""
    arch = arch or platform.machine()
    named = next((env[v] for v in TOOLKIT_HOME_VARS if env.get(v, "").strip()), None)
    home = Path(named.strip()) if named else DEFAULT_TOOLKIT_HOME
    if not home.is_dir() or not _looks_like_toolkit(home, arch):
        return None
    return CannToolkit(home=home, version=_toolkit_version(home, arch), arch=arch)


def describe_toolkit_search(env: Mapping[str, str] = os.environ) -> str:
    """Where find_cann_toolkit looked, for messages."""
    named = [f"{v}={env[v]}" for v in TOOLKIT_HOME_VARS if env.get(v, "").strip()]
    return named[0] if named else f"{', '.join(TOOLKIT_HOME_VARS)} unset; nothing at {DEFAULT_TOOLKIT_HOME}"


def normalize_soc(name: str) -> str:
    """'ascend910B3' / '910B3' -> 'Ascend910B3' (the platform_config file stem)."""
    name = name.strip()
    if name.lower().startswith("ascend"):
        return "Ascend" + name[6:]
    return "Ascend" + name


def parse_npu_smi_board(text: str) -> str | None:
    """SoC name from `npu-smi info -t board -i N -c 0`: 'Chip Name', plus '_<NPU Name>' on A3."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    chip = fields.get("Chip Name", "")
    if not chip:
        return None
    npu = fields.get("NPU Name", "")
    return normalize_soc(f"{chip}_{npu}" if npu else chip)


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def detect_soc_version(env: Mapping[str, str] = os.environ) -> str | None:
    """SOC_VERSION if set, else what npu-smi reports for NPU 0; None without either."""
    if env.get("SOC_VERSION", "").strip():
        return normalize_soc(env["SOC_VERSION"])
    out = _run(["npu-smi", "info", "-t", "board", "-i", "0", "-c", "0"])
    return parse_npu_smi_board(out) if out else None


def aicore_arch(toolkit: CannToolkit, soc: str) -> int | None:
    """The AI Core architecture number of `soc` (AIC_version=AIC-C-220 -> 220), from the toolkit's
    platform_config/<soc>.ini; None if the file or the key is missing or garbled."""
    try:
        text = (toolkit.platform_config_dir / f"{soc}.ini").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "version" and line.partition("=")[0].strip() == "AIC_version":
            match = re.fullmatch(r"[A-Za-z]+(?:-[A-Za-z]+)*-(\d+)", line.partition("=")[2].strip())
            return int(match.group(1)) if match else None
    return None


def known_socs(toolkit: CannToolkit) -> list[str]:
    """SoC names the toolkit has platform configs for (for 'did you mean' messages)."""
    try:
        return sorted(p.stem for p in toolkit.platform_config_dir.glob("*.ini"))
    except OSError:
        return []


def resolve_soc(toolkit: CannToolkit, soc: str) -> str:
    """The toolkit's own spelling of `soc`: images export SOC_VERSION in lower case (ascend910b1)
    while platform_config names the file Ascend910B1.ini."""
    matches = [known for known in known_socs(toolkit) if known.lower() == soc.lower()]
    return matches[0] if matches else soc


def driver_version(root: Path = DEFAULT_DRIVER_ROOT) -> str | None:
    """The Ascend driver's version (Version= in <root>/version.info), e.g. '24.1.rc2'."""
    return _key_values(Path(root) / "version.info").get("Version") or None


# The host-memory registration call each Ascend driver release uses, newest first: a driver at or
# above a release uses its call; below the last one, host memory cannot be registered. The native
# registrar makes this choice when registration is enabled (enable_ascend_registration in
# native/cpu/ascend_registrar.cpp) and is the source of truth; Python reads these thresholds from here
# only, and test_device_registration.py checks both agree on every driver version it runs.
DRIVER_REGISTRATION_CALLS = (((25, 0), "aclrtHostRegister"), ((24, 1), "halHostRegister"))
MIN_REGISTRATION_DRIVER = DRIVER_REGISTRATION_CALLS[-1][0]


def parse_driver_version(version: str | None) -> tuple[int, int] | None:
    """'24.1.rc2' -> (24, 1); '25.0.0' -> (25, 0); None unless it starts with two numbers. Same rule
    as the native registrar's parse_driver_version (ascend_registrar.cpp)."""
    match = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def registration_call(release: tuple[int, int]) -> str | None:
    """The registration call driver `release` (as parse_driver_version gives it) uses; None: too old."""
    return next((call for first, call in DRIVER_REGISTRATION_CALLS if release >= first), None)


def release_text(release: tuple[int, int]) -> str:
    """(24, 1) -> '24.1'."""
    return ".".join(map(str, release))


def npu_count(dev: Path = Path("/dev")) -> int:
    """NPUs on this host: npu-smi's 'Total Count', else the /dev/davinciN device nodes."""
    out = _run(["npu-smi", "info", "-l"])
    if out:
        match = re.search(r"Total Count\s*:\s*(\d+)", out)
        if match:
            return int(match.group(1))
    try:
        return sum(1 for p in Path(dev).iterdir() if re.fullmatch(r"davinci\d+", p.name))
    except OSError:
        return 0


def runtime_library_candidates(env: Mapping[str, str] = os.environ,
                               driver_root: Path = DEFAULT_DRIVER_ROOT) -> dict[str, list[str]]:
    """Paths to try, in order, for the runtime libraries the device registration dlopens.

    An LMCACHE_ASCEND_*_LIB variable replaces the search for its library. The bare names at the
    end go through the loader's own path (LD_LIBRARY_PATH, ldconfig). libascend_hal.so comes from
    the driver only: the toolkit's devlib/ copy is a link-time stub (the loader rejects it too).
    """
    acl = []
    toolkit = find_cann_toolkit(env)
    for home in ([toolkit.home] if toolkit else []) + [DEFAULT_TOOLKIT_HOME]:
        path = str(home / "lib64" / "libascendcl.so")
        if path not in acl:
            acl.append(path)
    acl.append("libascendcl.so")
    driver_lib = Path(driver_root) / "lib64" / "driver"
    search = {
        "acl": acl,
        "hal": [str(driver_lib / "libascend_hal.so"), "libascend_hal.so"],
        "dsmi": [str(driver_lib / "libdrvdsmi_host.so"), "libdrvdsmi_host.so"],
    }
    for name, var in (("acl", "LMCACHE_ASCEND_ACL_LIB"), ("hal", "LMCACHE_ASCEND_HAL_LIB"),
                      ("dsmi", "LMCACHE_ASCEND_DSMI_LIB")):
        if env.get(var, "").strip():
            search[name] = [env[var].strip()]
    return search


def build_info() -> dict:
    """What the installed wheel was built with (written by the build hook): {'backends': [...],
    'reason': ..., and for the Ascend backend 'cann_version', 'soc_version', 'aicore_arch'}."""
    path = Path(__file__).parent / "_native" / "build_info.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
