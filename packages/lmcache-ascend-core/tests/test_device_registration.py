"""Registration of host memory with an Ascend NPU (native/cpu/ascend_registrar.cpp via lmcache_ascend.memory).

Two halves:
- Without CANN (this machine): enabling fails with a reason that names what is missing and the fix,
  nothing is installed, and pools keep working unregistered.
- With a runtime: the real libascendcl.so / libascend_hal.so / libdrvdsmi_host.so cannot exist on a
  host without an NPU, so each test compiles three small C libraries into tmp_path that export the
  same symbols with the same signatures, record every call (arguments, and what the pages looked
  like at that moment) to a log file, and return the codes a test programs through FAKE_* variables.
  The registrar is pointed at them with LMCACHE_ASCEND_ACL_LIB / _HAL_LIB / _DSMI_LIB, the same knobs
  a user has. This checks our side of the contract (which call for which driver, arguments, device
  ids, address translation, cleanup on failure and on close); the devices' side only runs on Ascend
  hardware. Each scenario runs in a child process so the loaded libraries never leak between tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmcache_ascend import _cann, memory

MiB = 1 << 20

FAKE_COMMON = r"""
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void record(const char* fmt, ...) {
  const char* path = getenv("FAKE_CALL_LOG");
  if (!path || !*path) return;
  FILE* f = fopen(path, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}
static int programmed(const char* name) {
  const char* v = getenv(name);
  return v ? atoi(v) : 0;
}
/* Pages of [p, p+size) resident right now (mincore). */
static size_t resident_pages(void* p, size_t size) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (size + page - 1) / page, count = 0;
  unsigned char* vec = malloc(n);
  if (mincore(p, size, vec) == 0)
    for (size_t i = 0; i < n; ++i) count += vec[i] & 1;
  free(vec);
  return count;
}
/* NUMA node of the page at p (move_pages in query mode), -1 if unknown. */
static int node_of(void* p) {
  void* pages[1] = {p};
  int status[1] = {-1};
  if (syscall(SYS_move_pages, 0, 1, pages, NULL, status, 0) != 0) return -1;
  return status[0];
}
/* Locked memory of this process in kB (VmLck). */
static long locked_kb(void) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmLck:", 6) == 0) kb = atol(line + 6);
  if (f) fclose(f);
  return kb;
}
/* Device addresses handed out: a window far from host addresses, one GiB-aligned slot per call. */
static uintptr_t next_device_address = (uintptr_t)0x200000000000ULL;
static void* new_device_address(uint64_t size) {
  uintptr_t step = (size + (1ULL << 30) - 1) & ~((uintptr_t)(1ULL << 30) - 1);
  return (void*)__atomic_fetch_add(&next_device_address, step, __ATOMIC_RELAXED);
}
"""

FAKE_ACL = FAKE_COMMON + r"""
static int current_device = -1;
int aclrtGetDevice(int32_t* device) {
  if (current_device < 0) {
    const char* v = getenv("FAKE_ACL_DEVICE");
    if (!v) return 107002; /* ACL_ERROR_RT_CONTEXT_NULL */
    current_device = atoi(v);
  }
  *device = current_device;
  return 0;
}
const char* aclrtGetSocName(void) { return getenv("FAKE_SOC_NAME"); /* NULL: unnamed, as old runtimes */ }
int aclrtSetDevice(int32_t device) {
  record("aclrtSetDevice %d", device);
  current_device = device;
  return 0;
}
int aclrtHostRegister(void* ptr, uint64_t size, int type, void** dev) {
  int rc = programmed("FAKE_ACL_REGISTER_RC");
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  *dev = rc ? NULL : new_device_address(size);
  record("aclrtHostRegister %p %llu %d -> %d %p resident=%zu/%zu node=%d", ptr, (unsigned long long)size, type,
         rc, *dev, resident_pages(ptr, size), (size_t)((size + page - 1) / page), node_of(ptr));
  return rc;
}
int aclrtHostUnregister(void* ptr) {
  record("aclrtHostUnregister %p", ptr);
  return programmed("FAKE_ACL_UNREGISTER_RC");
}
"""

FAKE_HAL = FAKE_COMMON + r"""
int halHostRegister(void* ptr, uint64_t size, uint32_t flag, uint32_t devid, void** dev) {
  int rc = programmed("FAKE_HAL_REGISTER_RC");
  *dev = rc ? NULL : new_device_address(size);
  record("halHostRegister %p %llu %u %u -> %d %p locked_kb=%ld", ptr, (unsigned long long)size, flag, devid, rc,
         *dev, locked_kb());
  return rc;
}
int halHostUnregister(void* ptr, uint32_t devid) {
  record("halHostUnregister %p %u", ptr, devid);
  return programmed("FAKE_HAL_UNREGISTER_RC");
}
"""

FAKE_DSMI = FAKE_COMMON + r"""
int dsmi_get_version(int device, char* out, unsigned int len, unsigned int* out_len) {
  const char* v = getenv("FAKE_DRIVER_VERSION");
  record("dsmi_get_version %d", device);
  if (!v) return 8; /* what the real one answers for a device it cannot reach */
  snprintf(out, len, "%s", v);
  *out_len = (unsigned int)strlen(out);
  return 0;
}
"""


@pytest.fixture(scope="module")
def fake_runtime(tmp_path_factory) -> dict[str, Path]:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("needs a C compiler to build the stand-in runtime libraries")
    root = tmp_path_factory.mktemp("fake-cann")
    libs = {}
    for name, source, lib in (("acl", FAKE_ACL, "libascendcl.so"), ("hal", FAKE_HAL, "libascend_hal.so"),
                              ("dsmi", FAKE_DSMI, "libdrvdsmi_host.so")):
        (root / f"{name}.c").write_text(source)
        libs[name] = root / lib
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", f"-Wl,-soname,{lib}", "-o", str(libs[name]),
                        str(root / f"{name}.c")], check=True)
    # The toolkit's link-time stub lives in .../devlib/: the registrar must refuse it.
    (root / "devlib").mkdir()
    libs["devlib_hal"] = root / "devlib" / "libascend_hal.so"
    shutil.copy(libs["hal"], libs["devlib_hal"])
    return libs


def run_child(fake_runtime, tmp_path, code: str, **env: str) -> tuple[dict, list[str]]:
    """Run `code` in a fresh interpreter wired to the stand-in libraries; returns (the JSON it
    prints on its last line, the recorded calls)."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "ASCEND_RT_VISIBLE"))}
    child_env.update(LMCACHE_ASCEND_ACL_LIB=str(fake_runtime["acl"]), LMCACHE_ASCEND_HAL_LIB=str(fake_runtime["hal"]),
                     LMCACHE_ASCEND_DSMI_LIB=str(fake_runtime["dsmi"]), FAKE_CALL_LOG=str(log), FAKE_ACL_DEVICE="0")
    child_env.update(env)
    prelude = ("import gc, json, os, threading\nfrom pathlib import Path\n"
               "from lmcache_ascend import memory as m\n"
               f"NO_DRIVER = Path({str(tmp_path / 'no-driver')!r})\n")
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=child_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    calls = log.read_text().splitlines() if log.exists() else []
    return json.loads(done.stdout.strip().splitlines()[-1]), calls


def fields(call: str) -> list[str]:
    return call.replace("->", "").split()


# -- no CANN --------------------------------------------------------------------------------------
def test_without_cann_nothing_is_enabled_and_pools_still_work(tmp_path, monkeypatch):
    missing = tmp_path / "no-cann" / "libascendcl.so"
    env = {"LMCACHE_ASCEND_ACL_LIB": str(missing)}
    with pytest.raises(RuntimeError) as err:
        memory.enable_device_registration(env)
    text = str(err.value)
    assert str(missing) in text and "LMCACHE_ASCEND_ACL_LIB" in text and "set_env.sh" in text
    name, reason = memory.device_registration_status()
    assert name is None and str(missing) in reason
    pool = memory.HostPool(4 * MiB)
    assert not pool.registered and not pool.locked
    pool.tensor(pool.allocate(MiB), MiB).fill_(7)
    with pytest.raises(RuntimeError, match="no device registrar is installed"):
        memory.device_address(pool.base)
    monkeypatch.setenv("LMCACHE_ASCEND_ACL_LIB", str(missing))
    with pytest.raises(RuntimeError, match=r"(?s)register=True: cannot register host memory.*register='auto'"):
        memory.HostPool(4 * MiB, register=True)
    assert pool.close() == 1


def test_status_before_anything_was_tried_says_how_to_enable(fake_runtime, tmp_path):
    status, calls = run_child(fake_runtime, tmp_path, """
        p = m.HostPool(1 << 20)
        print(json.dumps([m.device_registration_status(), p.registered, m.device_registrar_name()]))
    """)
    (name, reason), registered, registrar = status
    assert name is None and registrar is None and not registered and calls == []
    assert "enable_device_registration()" in reason and "register=True" in reason


# -- driver >= 25: aclrtHostRegister ---------------------------------------------------------------
def test_acl_path_registers_translates_and_unregisters_on_close(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        name = m.enable_device_registration(driver_root=NO_DRIVER)
        again = m.enable_device_registration(driver_root=NO_DRIVER)
        pool = m.HostPool(4 << 20)
        a = pool.allocate(1 << 20)
        inside = [m.device_address(pool.base), m.device_address(a + 12345), m.device_address(pool.base + pool.capacity - 1)]
        errors = []
        for bad in (pool.base + pool.capacity, pool.base - 1, 4096):
            try:
                m.device_address(bad)
            except ValueError as exc:
                errors.append(str(exc))
        state = [pool.registered, pool.locked]
        pool.free(a)
        before_close = Path(os.environ["FAKE_CALL_LOG"]).read_text().count("Unregister")
        pool.close()
        m.disable_device_registration()
        print(json.dumps(dict(name=name, again=again, status=m.device_registration_status(), base=pool.base, a=a,
                              inside=inside, errors=errors, state=state, before_close=before_close,
                              after=[pool.registered, m.device_registrar_name()])))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert out["name"] == out["again"] == "ascend-acl"
    assert calls[0] == "dsmi_get_version 0"
    register = fields(calls[1])
    assert register[:4] == ["aclrtHostRegister", hex(out["base"]), str(4 * MiB), "0"]  # ACL_HOST_REGISTER_MAPPED
    device = int(register[5], 16)
    assert out["inside"] == [device, device + (out["a"] - out["base"]) + 12345, device + 4 * MiB - 1]
    assert len(out["errors"]) == 3 and all("not inside host memory registered with the NPU" in e for e in out["errors"])
    assert out["state"] == [True, True] and out["before_close"] == 0
    assert calls[2:] == [f"aclrtHostUnregister {hex(out['base'])}"]
    assert out["after"] == [False, None] and out["status"][0] is None


def test_register_true_enables_registration_and_locks_the_pool(fake_runtime, tmp_path):
    """register=True turns registration on first, so lock='auto' sees it: a registered pool is locked."""
    out, calls = run_child(fake_runtime, tmp_path, """
        before = m.device_registrar_name()
        pool = m.HostPool(4 << 20, register=True)
        print(json.dumps(dict(before=before, registrar=m.device_registrar_name(), registered=pool.registered,
                              locked=pool.locked, base=pool.base)))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert out["before"] is None and out["registrar"] == "ascend-acl"
    assert out["registered"] and out["locked"]
    assert fields(calls[1])[:2] == ["aclrtHostRegister", hex(out["base"])]


def test_the_runtime_already_in_the_process_is_reused(fake_runtime, tmp_path):
    """torch_npu loads libascendcl.so first; a second copy from another path would not know its
    current device, so the registrar takes the loaded one (matched by soname) over the toolkit path,
    which here holds another loadable copy."""
    (tmp_path / "elsewhere" / "lib64").mkdir(parents=True)
    shutil.copy(fake_runtime["acl"], tmp_path / "elsewhere" / "lib64" / "libascendcl.so")
    out, calls = run_child(fake_runtime, tmp_path, f"""
        import ctypes
        ctypes.CDLL({str(fake_runtime['acl'])!r})  # what torch_npu's import does
        del os.environ["LMCACHE_ASCEND_ACL_LIB"]
        os.environ["ASCEND_HOME_PATH"] = {str(tmp_path / 'elsewhere')!r}
        print(json.dumps([m.enable_device_registration(driver_root=NO_DRIVER), m.device_registration_status()[1]]))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert out[0] == "ascend-acl" and out[1].endswith(f"; {fake_runtime['acl']})")


def test_status_names_the_path_and_driver(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        print(json.dumps(m.device_registration_status()))
    """, FAKE_DRIVER_VERSION="25.1.0")
    name, how = out
    assert name == "ascend-acl"
    assert how == f"ascend-acl: aclrtHostRegister (driver 25.1.0; {fake_runtime['acl']})"


def test_310p_refuses_registration_and_pools_stay_unregistered(fake_runtime, tmp_path):
    # CANN maps host memory for the NPU on A2/A3 only; the 310P stages instead.
    out, calls = run_child(fake_runtime, tmp_path, """
        try:
            m.enable_device_registration(driver_root=NO_DRIVER)
            error = None
        except RuntimeError as exc:
            error = str(exc)
        pool = m.HostPool(1 << 20)
        print(json.dumps([error, m.device_registration_status()[0], pool.registered]))
    """, FAKE_DRIVER_VERSION="25.0.rc1", FAKE_SOC_NAME="Ascend310P3")
    error, name, registered = out
    assert "not available on Ascend310P3" in error and "stage through device memory" in error
    assert name is None and registered is False
    assert not any("HostRegister" in call for call in calls)


def test_pinned_allocations_are_registered_and_unregistered_when_freed(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        import lmcache_ascend.ops as ops
        m.enable_device_registration(driver_root=NO_DRIVER)
        ptr = ops.alloc_pinned_ptr(3 * 4096, 0)
        dev = m.device_address(ptr + 5)
        registered = m.pinned_mapping(ptr).registered
        ops.free_pinned_ptr(ptr)
        gc.collect()
        print(json.dumps(dict(ptr=ptr, dev=dev, registered=registered)))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    register = fields(calls[1])
    assert register[:3] == ["aclrtHostRegister", hex(out["ptr"]), str(3 * 4096)] and out["registered"]
    assert out["dev"] == int(register[5], 16) + 5
    assert calls[-1] == f"aclrtHostUnregister {hex(out['ptr'])}"


def test_registration_happens_after_numa_binding_and_population(fake_runtime, tmp_path):
    """The device maps the pages as they are when registered: they must already sit on their node."""
    out, calls = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        bound = m.HostPool(2 << 20, numa_node=0, populate=True, lock=False)
        locked = m.HostPool(2 << 20, lock=True)
        print(json.dumps([bound.base, locked.base]))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    bound, locked = (fields(c) for c in calls[1:3])
    assert bound[1] == hex(out[0]) and bound[6:] == ["resident=512/512", "node=0"]
    assert locked[1] == hex(out[1]) and locked[6] == "resident=512/512"  # mlock faulted them in first


def test_unregistered_only_when_the_last_view_goes(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        pool = m.HostPool(1 << 20)
        base = pool.base
        pool.allocate(4096)
        live = pool.close()
        at_close = Path(os.environ["FAKE_CALL_LOG"]).read_text().count("Unregister")
        del pool
        gc.collect()
        print(json.dumps(dict(base=base, live=live, at_close=at_close)))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert out["live"] == 1 and out["at_close"] == 0
    assert calls[-1] == f"aclrtHostUnregister {hex(out['base'])}"


def test_failed_acl_registration_leaves_nothing_registered(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        try:
            m.HostPool(4 << 20, register=True)
            error = None
        except RuntimeError as exc:
            error = str(exc)
        gc.collect()
        unregistered = Path(os.environ["FAKE_CALL_LOG"]).read_text().count("Unregister")
        m.disable_device_registration()  # refuses while anything is still registered
        m.enable_device_registration(driver_root=NO_DRIVER)
        del os.environ["FAKE_ACL_REGISTER_RC"]
        pool = m.HostPool(4 << 20, register=True)
        print(json.dumps(dict(error=error, unregistered=unregistered, registered=pool.registered)))
    """, FAKE_DRIVER_VERSION="25.0.rc1", FAKE_ACL_REGISTER_RC="207001")
    error = out["error"]
    assert "aclrtHostRegister(0x" in error and "4.0 MiB, ACL_HOST_REGISTER_MAPPED) returned 207001" in error
    assert "ACL_ERROR_RT_MEMORY_ALLOCATION" in error and "--cap-add IPC_LOCK" in error and "--privileged" in error
    assert "ulimit -l unlimited" in error and "~200 GB" in error and "RLIMIT_MEMLOCK" in error
    assert out["unregistered"] == 0  # the failed range is not handed back to a driver that never took it
    assert out["registered"] and sum("aclrtHostRegister" in c for c in calls) == 2


def test_no_current_device_is_named_with_the_fix(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        del os.environ["FAKE_ACL_DEVICE"]
        m.enable_device_registration(driver_root=NO_DRIVER)
        try:
            m.HostPool(1 << 20)
        except RuntimeError as exc:
            print(json.dumps(str(exc)))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert "aclrtGetDevice returned 107002 (ACL_ERROR_RT_CONTEXT_NULL)" in out
    assert "torch.npu.set_device" in out
    assert not any("HostRegister" in c for c in calls)


def test_unregister_switches_to_the_registering_device(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        pool = m.HostPool(1 << 20)
        seen = []
        def close_elsewhere():  # a thread whose current device is another one
            import ctypes
            ctypes.CDLL(os.environ["LMCACHE_ASCEND_ACL_LIB"]).aclrtSetDevice(3)
            pool.close()
        t = threading.Thread(target=close_elsewhere)
        t.start(); t.join()
        print(json.dumps(pool.base))
    """, FAKE_DRIVER_VERSION="25.0.rc1", FAKE_ACL_DEVICE="1")
    assert calls[-4:] == ["aclrtSetDevice 3", "aclrtSetDevice 1", f"aclrtHostUnregister {hex(out)}",
                          "aclrtSetDevice 3"]


# -- driver < 25: halHostRegister ------------------------------------------------------------------
def test_hal_path_uses_the_visible_device_id_mlocks_and_unlocks(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        def locked_kb():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
        name = m.enable_device_registration(driver_root=NO_DRIVER)
        pool = m.HostPool(4 << 20, lock=False, register=True)
        dev = m.device_address(pool.base + 4096)
        during = locked_kb()
        pool.close()
        print(json.dumps(dict(name=name, base=pool.base, dev=dev, during=during, after=locked_kb(),
                              status=m.device_registration_status())))
    """, FAKE_DRIVER_VERSION="24.1.rc2", ASCEND_RT_VISIBLE_DEVICES="4,5,6", FAKE_ACL_DEVICE="1")
    assert out["name"] == "ascend-hal"
    assert out["status"][1].startswith("ascend-hal: halHostRegister (driver 24.1.rc2; ")
    assert calls[0] == "dsmi_get_version 4"  # the first visible device
    register = fields(calls[1])
    assert register[:5] == ["halHostRegister", hex(out["base"]), str(4 * MiB), "3", "5"]  # PCIE_TH, logical id 5
    assert int(register[7].split("=")[1]) >= 4096  # the registrar locked the 4 MiB itself (lock=False)
    assert out["dev"] == int(register[6], 16) + 4096
    assert calls[2] == f"halHostUnregister {hex(out['base'])} 5"
    assert out["during"] >= 4096 and out["after"] == 0


def test_failed_hal_registration_unlocks_and_explains_the_driver(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        try:
            m.HostPool(1 << 20, lock=False, register=True)
        except RuntimeError as exc:
            error = str(exc)
        vmlck = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmLck:")]
        m.disable_device_registration()
        print(json.dumps(dict(error=error, vmlck=vmlck[0].split()[1])))
    """, FAKE_DRIVER_VERSION="24.1.0", FAKE_HAL_REGISTER_RC="65534")
    assert "HOST_MEM_MAP_DEV_PCIE_TH, device 0) returned 65534 (DRV_ERROR_NOT_SUPPORT)" in out["error"]
    assert "driver >= 24.1.0" in out["error"] and "(24.1.0)" in out["error"]
    assert out["vmlck"] == "0" and not any("Unregister" in c for c in calls)


def test_current_device_outside_the_visible_list(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        try:
            m.HostPool(1 << 20)
        except ValueError as exc:
            print(json.dumps(str(exc)))
    """, FAKE_DRIVER_VERSION="24.1.rc2", ASCEND_RT_VISIBLE_DEVICES="2,3,-1,4", FAKE_ACL_DEVICE="2")
    assert "current NPU is device 2 but ASCEND_RT_VISIBLE_DEVICES lists 2 device(s)" in out


# -- which path, and when none -------------------------------------------------------------------
@pytest.mark.parametrize("version, expect", [
    ("25.0.rc1", "ascend-acl"), ("26.0.0", "ascend-acl"), ("24.1.rc2", "ascend-hal"), ("24.1.0", "ascend-hal"),
    ("24.0.3", "older than 24.1.0"), ("23.0.3", "older than 24.1.0"), ("garbled", "not <major>.<minor>"),
])
def test_driver_version_picks_the_path(fake_runtime, tmp_path, version, expect):
    out, _ = run_child(fake_runtime, tmp_path, """
        try:
            result = m.enable_device_registration(driver_root=NO_DRIVER)
        except RuntimeError as exc:
            result = str(exc)
        print(json.dumps([result, m.device_registration_status(), m.HostPool(1 << 20).registered]))
    """, FAKE_DRIVER_VERSION=version)
    result, (name, reason), registered = out
    assert expect in result
    # The doctor predicts the native registrar's choice from _cann's table: both must agree.
    release = _cann.parse_driver_version(version)
    call = _cann.registration_call(release) if release else None
    assert call == {"ascend-acl": "aclrtHostRegister", "ascend-hal": "halHostRegister"}.get(expect)
    if expect.startswith("ascend-"):
        assert name == expect and registered
    else:
        assert name is None and not registered and reason == f"cannot register host memory with an NPU: {result.split(': ', 1)[1]}"


def test_driver_version_from_version_info_when_dsmi_is_missing(fake_runtime, tmp_path):
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "version.info").write_text("Version=25.0.rc1\nascendhal_version=7.35.23\n")
    out, calls = run_child(fake_runtime, tmp_path, f"""
        name = m.enable_device_registration(driver_root=Path({str(driver)!r}))
        try:
            m.disable_device_registration()
            m.enable_device_registration(driver_root=NO_DRIVER)
            error = None
        except RuntimeError as exc:
            error = str(exc)
        print(json.dumps([name, error]))
    """, LMCACHE_ASCEND_DSMI_LIB=str(tmp_path / "missing" / "libdrvdsmi_host.so"))
    name, error = out
    assert name == "ascend-acl"
    assert "driver version is unknown" in error and "libdrvdsmi_host.so" in error and "LMCACHE_ASCEND_DSMI_LIB" in error


def test_dsmi_error_falls_back_and_is_reported(fake_runtime, tmp_path):
    out, calls = run_child(fake_runtime, tmp_path, """
        try:
            m.enable_device_registration(driver_root=NO_DRIVER)
        except RuntimeError as exc:
            print(json.dumps(str(exc)))
    """)  # FAKE_DRIVER_VERSION unset: dsmi_get_version fails
    assert "dsmi_get_version(device 0) returned 8" in out and calls == ["dsmi_get_version 0"]


def test_the_devlib_stub_is_refused(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        try:
            m.enable_device_registration(driver_root=NO_DRIVER)
        except RuntimeError as exc:
            print(json.dumps(str(exc)))
    """, FAKE_DRIVER_VERSION="24.1.rc2", LMCACHE_ASCEND_HAL_LIB=str(fake_runtime["devlib_hal"]))
    assert "link-time stub" in out and "devlib/" in out and "/usr/local/Ascend/driver/lib64/driver/" in out


def test_a_library_without_the_runtime_symbols_is_refused(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        try:
            m.enable_device_registration(driver_root=NO_DRIVER)
        except RuntimeError as exc:
            print(json.dumps(str(exc)))
    """, FAKE_DRIVER_VERSION="25.0.rc1", LMCACHE_ASCEND_ACL_LIB=str(fake_runtime["hal"]))
    assert "has no aclrtGetDevice: it is not a CANN runtime library" in out


def test_disable_refuses_while_memory_is_registered(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        pool = m.HostPool(1 << 20)
        try:
            m.disable_device_registration()
        except ValueError as exc:
            error = str(exc)
        pool.close()
        m.disable_device_registration()
        print(json.dumps([error, m.device_registrar_name()]))
    """, FAKE_DRIVER_VERSION="25.0.rc1")
    assert "1 host range(s) are still registered" in out[0] and out[1] is None


def test_lookups_stay_correct_while_other_pools_come_and_go(fake_runtime, tmp_path):
    out, _ = run_child(fake_runtime, tmp_path, """
        m.enable_device_registration(driver_root=NO_DRIVER)
        keep = m.HostPool(2 << 20)
        expect = m.device_address(keep.base)
        errors = []
        def churn():
            try:
                for _ in range(200):
                    m.HostPool(64 << 10).close()
            except Exception as exc:
                errors.append(repr(exc))
        def lookup():
            try:
                for i in range(20000):
                    off = (i * 4099) % keep.capacity
                    assert m.device_address(keep.base + off) == expect + off
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=f) for f in (churn, churn, lookup, lookup)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(json.dumps(errors))
    """, FAKE_DRIVER_VERSION="25.0.rc1", FAKE_CALL_LOG="")
    assert out == []
