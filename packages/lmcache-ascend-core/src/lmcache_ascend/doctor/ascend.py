"""The Ascend stack as this host has it: NPUs, CANN toolkit, driver, SoC, the Ascend backend in this
wheel, the device registrar, and the trial "make NPU 0 current" the pool check registers under.

Thresholds on the driver version come from _cann (DRIVER_REGISTRATION_CALLS), nowhere else."""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping

from lmcache_ascend import _cann
from lmcache_ascend.doctor.install import ASCEND_LIBRARY, NATIVE_DIR, REINSTALL_CORE
from lmcache_ascend.doctor.report import FAIL, INFO, OK, WARN, Check

MIN_DRIVER = _cann.MIN_REGISTRATION_DRIVER
MIN_DRIVER_TEXT = _cann.release_text(MIN_DRIVER)
# ACL's "aclInit was already called" (acl_base.h ACL_ERROR_REPEAT_INITIALIZE): not a failure.
ACL_REPEAT_INITIALIZE = 100002
TRIAL_DEVICE = 0  # the first visible NPU (after ASCEND_RT_VISIBLE_DEVICES)


@dataclasses.dataclass
class Host:
    """What the checks share, gathered once."""
    env: Mapping[str, str]
    npus: int
    toolkit: Any  # _cann.CannToolkit | None
    soc: str | None
    driver: str | None
    ascend_library: Path | None
    registrar: str | None  # the device registrar in effect, after trying to enable one on NPU hosts
    registration: str | None  # how it registers, or why there is none


def gather(env: Mapping[str, str], native_error: str | None) -> Host:
    npus = _cann.npu_count()
    if native_error is None:
        from lmcache_ascend._native import transfer

        library = Path(transfer.npu_library_path())  # where the CPU library loads the Ascend backend from
        registrar, registration = _device_registration(env, npus)
    else:
        library = NATIVE_DIR / ASCEND_LIBRARY
        registrar, registration = None, None  # not checked: backend.cpu reports why
    return Host(env=env, npus=npus, toolkit=_cann.find_cann_toolkit(env=env),
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


def check_npus(host: Host) -> Check:
    if host.npus:
        return Check("npu.devices", OK, f"{host.npus} NPU(s) visible", details={"count": host.npus})
    return Check("npu.devices", INFO, "no NPU on this host: the CPU backend will be used",
                 details={"count": 0})


def check_toolkit(host: Host) -> Check:
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


def check_driver(host: Host) -> Check:
    details = {"version": host.driver}
    if host.driver is None:
        if host.npus:
            return Check("cann.driver", FAIL, "NPUs are present but the Ascend driver version is unreadable "
                         f"({_cann.DEFAULT_DRIVER_ROOT / 'version.info'})",
                         fix=f"install the Ascend driver (>= {MIN_DRIVER_TEXT}) matching the NPU firmware; in a "
                         "container mount /usr/local/Ascend/driver from the host", details=details)
        return Check("cann.driver", INFO, "no Ascend driver installed", details=details)
    release = _cann.parse_driver_version(host.driver)
    if release is None:
        return Check("cann.driver", WARN, f"Ascend driver version {host.driver!r} is not in the x.y form",
                     fix=f"check {_cann.DEFAULT_DRIVER_ROOT / 'version.info'}; reinstall the driver if it is damaged",
                     details=details)
    call = _cann.registration_call(release)
    if call is None:
        return Check("cann.driver", FAIL, f"Ascend driver {host.driver} is older than {MIN_DRIVER_TEXT}: host "
                     "memory cannot be registered with the NPU",
                     fix=f"upgrade the Ascend driver to {MIN_DRIVER_TEXT} or newer", details=details)
    return Check("cann.driver", OK, f"Ascend driver {host.driver} (host memory registration: {call})",
                 details=details)


def check_soc(host: Host) -> Check:
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


def check_ascend_backend(host: Host) -> Check:
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


def check_registrar(host: Host) -> Check:
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


@contextlib.contextmanager
def npu_current(env: Mapping[str, str], device: int) -> Iterator[str | None]:
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
    if rc not in (0, ACL_REPEAT_INITIALIZE):
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
