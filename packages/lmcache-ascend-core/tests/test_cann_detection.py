"""CANN detection (lmcache_ascend._cann) and the build hook's backend decision (hatch_build.py).

This machine has no CANN and no NPU. The toolkit, driver and /dev trees below are laid out in
tmp_path exactly as the CANN installer lays them out (file names, keys and formats copied from a
real 8.1.RC1 install), so the parsers read real-shaped files. `npu-smi` cannot exist here either: a
small script on PATH prints what the real tool prints, so the subprocess path is exercised too.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmcache_ascend import _cann

ARCH = platform.machine()
CORE = Path(__file__).resolve().parents[1]  # packages/lmcache-ascend-core (repository or sdist)

INSTALL_INFO = """\
package_name=Ascend-cann-toolkit
version=8.1.RC1
innerversion=V100R001C21SPC001B238
arch={arch}
os=linux
path=/usr/local/Ascend/ascend-toolkit/8.1.RC1/{arch}-linux
"""
VERSION_CFG = """\
# version: 1.0
runtime_running_version=[7.7.0.1.238:8.1.RC1]
compiler_running_version=[7.7.0.1.238:8.1.RC1]
toolkit_running_version=[7.7.0.1.238:8.1.RC1]
"""
# Real platform_config files repeat keys across sections; only [version] AIC_version matters.
SOC_INI = """\
# [Platform Info configuration begin]
[version]
SoC_version={soc}
Short_SoC_version=Ascend910B
AIC_version={aic}
CCEC_AIV_version=dav-c220-vec

[SoCInfo]
ai_core_cnt=20
vector_core_cnt=40

[AICoreintrinsicDtypeMap]
0=Intrinsic_vrec|float16,float32

[VectorCoreintrinsicDtypeMap]
0=Intrinsic_vrec|float16,float32
"""
NPU_SMI_910B = """\
        NPU ID                         : 0
        Chip ID                        : 0
        Chip Type                      : Ascend
        Chip Name                      : 910B3
        Chip Version                   : V1
        Board ID                       : 0x65
"""
NPU_SMI_A3 = """\
        NPU ID                         : 0
        Chip ID                        : 0
        Chip Type                      : Ascend
        Chip Name                      : Ascend910
        NPU Name                       : 9392
"""


def make_toolkit(root: Path, *, info: str | None = INSTALL_INFO, cfg: str | None = VERSION_CFG,
                 socs: dict[str, str] | None = None) -> Path:
    """A CANN toolkit tree: <root>/Ascend/ascend-toolkit/{8.1.RC1, latest -> 8.1.RC1}."""
    version_dir = root / "Ascend" / "ascend-toolkit" / "8.1.RC1"
    arch_dir = version_dir / f"{ARCH}-linux"
    (arch_dir / "data" / "platform_config").mkdir(parents=True)
    (version_dir / "lib64").mkdir()
    if info is not None:
        (arch_dir / "ascend_toolkit_install.info").write_text(info.format(arch=ARCH))
    if cfg is not None:
        (version_dir / "version.cfg").write_text(cfg)
    socs = {"Ascend910B3": "AIC-C-220", "Ascend310P3": "AIC-M-200"} if socs is None else socs
    for soc, aic in socs.items():
        (arch_dir / "data" / "platform_config" / f"{soc}.ini").write_text(SOC_INI.format(soc=soc, aic=aic))
    latest = version_dir.parent / "latest"
    latest.symlink_to(version_dir.name)
    return latest


def fake_npu_smi(bin_dir: Path, board: str, listing: str = "") -> None:
    """`npu-smi info -t board ...` prints `board`; `npu-smi info -l` prints `listing`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "npu-smi"
    script.write_text("#!/bin/sh\n"
                      f"if [ \"$3\" = board ]; then cat <<'EOF'\n{board}EOF\n"
                      f"elif [ \"$2\" = -l ]; then cat <<'EOF'\n{listing}EOF\n"
                      "else exit 1; fi\n")
    script.chmod(0o755)


@pytest.fixture
def no_default_toolkit(monkeypatch, tmp_path):
    """The default install path points into an empty tmp dir (this test must not see a real one)."""
    monkeypatch.setattr(_cann, "DEFAULT_TOOLKIT_HOME", tmp_path / "no-toolkit-here")


# -- toolkit ------------------------------------------------------------------------------------
def test_toolkit_found_from_ascend_home_path_with_version_and_arch(tmp_path):
    home = make_toolkit(tmp_path)
    tk = _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(home)})
    assert tk == _cann.CannToolkit(home=home, version="8.1.RC1", arch=ARCH)
    assert tk.platform_config_dir == home / f"{ARCH}-linux" / "data" / "platform_config"


def test_toolkit_variables_in_order_of_precedence(tmp_path):
    first, second = make_toolkit(tmp_path / "a"), make_toolkit(tmp_path / "b")
    env = {"ASCEND_TOOLKIT_HOME": str(first), "ASCEND_CANN_PACKAGE_PATH": str(second)}
    assert _cann.find_cann_toolkit(env).home == first
    assert _cann.find_cann_toolkit({"ASCEND_CANN_PACKAGE_PATH": str(second)}).home == second
    env["ASCEND_HOME_PATH"] = str(second)
    assert _cann.find_cann_toolkit(env).home == second


def test_default_install_path_is_used_when_no_variable_is_set(tmp_path, monkeypatch):
    home = make_toolkit(tmp_path)
    monkeypatch.setattr(_cann, "DEFAULT_TOOLKIT_HOME", home)
    assert _cann.find_cann_toolkit({}).home == home


def test_a_wrong_variable_is_not_silently_replaced_by_another_install(tmp_path, monkeypatch):
    monkeypatch.setattr(_cann, "DEFAULT_TOOLKIT_HOME", make_toolkit(tmp_path))
    assert _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(tmp_path / "missing")}) is None
    (tmp_path / "empty").mkdir()
    assert _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(tmp_path / "empty")}) is None
    assert "ASCEND_HOME_PATH=" in _cann.describe_toolkit_search({"ASCEND_HOME_PATH": str(tmp_path / "missing")})


def test_no_toolkit_anywhere(no_default_toolkit):
    assert _cann.find_cann_toolkit({}) is None
    assert "nothing at" in _cann.describe_toolkit_search({})


def test_version_falls_back_to_version_cfg(tmp_path):
    home = make_toolkit(tmp_path, info=None)
    assert _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(home)}).version == "8.1.RC1"


@pytest.mark.parametrize("info, cfg", [
    ("package_name=Ascend-cann-toolkit\nversion=\n", "toolkit_running_version=8.1.RC1\n"),  # empty / unbracketed
    ("\x00\xff garbage without keys", "runtime_running_version=[7.7.0.1.238]\n"),             # no release part
    (None, None),                                                                          # both missing
])
def test_garbled_or_missing_version_files_give_no_version_but_the_toolkit(tmp_path, info, cfg):
    home = make_toolkit(tmp_path, info=info, cfg=cfg)
    tk = _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(home)})
    assert tk is not None and tk.version is None


# -- SoC and AI Core architecture ------------------------------------------------------------
def test_aicore_arch_from_platform_config(tmp_path):
    tk = _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(make_toolkit(tmp_path))})
    assert _cann.aicore_arch(tk, "Ascend910B3") == 220
    assert _cann.aicore_arch(tk, "Ascend310P3") == 200
    assert _cann.aicore_arch(tk, "Ascend910B9") is None  # no such file
    assert _cann.known_socs(tk) == ["Ascend310P3", "Ascend910B3"]


@pytest.mark.parametrize("aic", ["AIC-C-", "AIC-C-2x0", "", "220"])
def test_garbled_aic_version_gives_none(tmp_path, aic):
    tk = _cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(make_toolkit(tmp_path, socs={"Ascend910B3": aic}))})
    assert _cann.aicore_arch(tk, "Ascend910B3") is None


def test_aic_version_outside_the_version_section_is_ignored(tmp_path):
    home = make_toolkit(tmp_path, socs={})
    ini = home / f"{ARCH}-linux" / "data" / "platform_config" / "Ascend910B3.ini"
    ini.write_text("[SoCInfo]\nAIC_version=AIC-C-220\n")
    assert _cann.aicore_arch(_cann.find_cann_toolkit({"ASCEND_HOME_PATH": str(home)}), "Ascend910B3") is None


@pytest.mark.parametrize("value, soc", [("Ascend910B3", "Ascend910B3"), ("ascend910B4", "Ascend910B4"),
                                        ("910B1", "Ascend910B1"), (" Ascend910_9392 ", "Ascend910_9392")])
def test_soc_version_variable_wins_and_is_normalized(value, soc):
    assert _cann.detect_soc_version({"SOC_VERSION": value}) == soc


def test_npu_smi_board_output_910b_and_a3():
    assert _cann.parse_npu_smi_board(NPU_SMI_910B) == "Ascend910B3"
    assert _cann.parse_npu_smi_board(NPU_SMI_A3) == "Ascend910_9392"
    assert _cann.parse_npu_smi_board("Error: no device\n") is None
    assert _cann.parse_npu_smi_board("") is None


def test_soc_and_npu_count_from_npu_smi_on_path(tmp_path, monkeypatch):
    fake_npu_smi(tmp_path / "bin", NPU_SMI_A3, "        Total Count                    : 16\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert _cann.detect_soc_version({}) == "Ascend910_9392"
    assert _cann.npu_count(tmp_path / "no-dev") == 16


def test_no_npu_smi_and_no_soc_version(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npu-smi on it
    assert _cann.detect_soc_version({}) is None


def test_npu_count_from_device_nodes_without_npu_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("davinci0", "davinci1", "davinci7", "davinci_manager", "devmm_svm", "hisi_hdc"):
        (dev / name).touch()
    assert _cann.npu_count(dev) == 3
    assert _cann.npu_count(tmp_path / "missing") == 0


# -- driver -------------------------------------------------------------------------------------
def test_driver_version_from_version_info(tmp_path):
    (tmp_path / "version.info").write_text("Version=24.1.rc2\nascendhal_version=7.35.23\ndrv_version=2.x\n")
    assert _cann.driver_version(tmp_path) == "24.1.rc2"
    (tmp_path / "version.info").write_text("ascendhal_version=7.35.23\n")
    assert _cann.driver_version(tmp_path) is None
    assert _cann.driver_version(tmp_path / "missing") is None


@pytest.mark.parametrize("text, parsed", [("24.1.rc2", (24, 1)), ("25.0.0", (25, 0)), (" 23.0.3\n", (23, 0)),
                                          ("25.RC1", None), ("", None), (None, None)])
def test_parse_driver_version(text, parsed):
    assert _cann.parse_driver_version(text) == parsed


def test_runtime_library_search_order_and_overrides(tmp_path, no_default_toolkit):
    home = make_toolkit(tmp_path)
    search = _cann.runtime_library_candidates({"ASCEND_HOME_PATH": str(home)}, tmp_path / "driver")
    assert search["acl"] == [str(home / "lib64" / "libascendcl.so"),
                             str(_cann.DEFAULT_TOOLKIT_HOME / "lib64" / "libascendcl.so"), "libascendcl.so"]
    assert search["hal"] == [str(tmp_path / "driver" / "lib64" / "driver" / "libascend_hal.so"), "libascend_hal.so"]
    assert not any("devlib" in p for p in search["hal"])
    assert search["dsmi"][0] == str(tmp_path / "driver" / "lib64" / "driver" / "libdrvdsmi_host.so")
    env = {"LMCACHE_ASCEND_ACL_LIB": "/x/acl.so", "LMCACHE_ASCEND_HAL_LIB": "/x/hal.so",
           "LMCACHE_ASCEND_DSMI_LIB": "/x/dsmi.so"}
    assert _cann.runtime_library_candidates(env) == {"acl": ["/x/acl.so"], "hal": ["/x/hal.so"],
                                                     "dsmi": ["/x/dsmi.so"]}


def test_installed_wheel_records_what_it_was_built_with():
    info = _cann.build_info()
    assert "cpu" in info["backends"] and info["reason"].startswith("lmcache-ascend: ")
    if "ascend" in info["backends"]:
        assert info["soc_version"] and isinstance(info["aicore_arch"], int)


# -- the build hook's decision ------------------------------------------------------------------
@pytest.fixture(scope="module")
def hook():
    """hatch_build.py from the source tree (it is not part of the wheel), loaded as hatchling does."""
    pytest.importorskip("hatchling", reason="the build-hook tests need the build requirements (test extra)")
    spec = importlib.util.spec_from_file_location("lmcache_ascend_hatch_build_under_test", CORE / "hatch_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hook_without_default_toolkit(hook, monkeypatch, tmp_path):
    monkeypatch.setattr(hook.cann, "DEFAULT_TOOLKIT_HOME", tmp_path / "no-toolkit-here")
    monkeypatch.setenv("PATH", str(tmp_path))  # and no npu-smi
    monkeypatch.delenv("CMAKE_BUILD_PARALLEL_LEVEL", raising=False)
    return hook


def test_plan_with_cann_builds_the_ascend_library_with_this_cmake_line(hook_without_default_toolkit, tmp_path):
    hook = hook_without_default_toolkit
    home = make_toolkit(tmp_path)
    env = {"ASCEND_HOME_PATH": str(home), "SOC_VERSION": "Ascend910B3"}
    build, line = hook.ascend_build_plan(env, torch_abi=lambda: 0)
    assert (build.soc, build.aicore_arch, build.cxx11_abi, build.toolkit.version) == ("Ascend910B3", 220, 0, "8.1.RC1")
    assert line.count("\n") == 0 and "CPU and Ascend backends" in line and "CANN 8.1.RC1" in line
    native, out = Path("/src/native"), Path("/tmp/native-x/ascend")
    assert build.cmake_commands(native, out) == [
        ["cmake", "-S", "/src/native/ascend", "-B", "/tmp/native-x/ascend", f"-DASCEND_CANN_PACKAGE_PATH={home}",
         "-DSOC_VERSION=Ascend910B3", "-DASCEND_AICORE_ARCH=220", "-DLMCACHE_ASCEND_INCLUDE=/src/native/include",
         "-DGLIBCXX_USE_CXX11_ABI=0", "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", "/tmp/native-x/ascend", "-j", str(len(os.sched_getaffinity(0)))],
    ]


def test_plan_takes_the_toolkits_spelling_of_a_lower_case_soc(hook_without_default_toolkit, tmp_path):
    # vllm-ascend images export SOC_VERSION=ascend910b3; platform_config names the file Ascend910B3.ini.
    env = {"ASCEND_HOME_PATH": str(make_toolkit(tmp_path)), "SOC_VERSION": "ascend910b3"}
    build, _ = hook_without_default_toolkit.ascend_build_plan(env, torch_abi=lambda: 1)
    assert (build.soc, build.aicore_arch) == ("Ascend910B3", 220)


def test_plan_asks_npu_smi_for_the_soc(hook_without_default_toolkit, tmp_path, monkeypatch):
    hook = hook_without_default_toolkit
    fake_npu_smi(tmp_path / "bin", NPU_SMI_910B)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    build, _ = hook.ascend_build_plan({"ASCEND_HOME_PATH": str(make_toolkit(tmp_path))}, torch_abi=lambda: 1)
    assert (build.soc, build.aicore_arch) == ("Ascend910B3", 220)


def test_cxx11_abi_sources(hook):
    assert hook.cxx11_abi({}, torch_abi=lambda: 0) == (0, "torch")
    assert hook.cxx11_abi({}, torch_abi=lambda: None) == (1, "default")
    assert hook.cxx11_abi({"LMCACHE_ASCEND_CXX11_ABI": "0"}, torch_abi=lambda: 1) == (0, "LMCACHE_ASCEND_CXX11_ABI")
    with pytest.raises(ValueError, match="LMCACHE_ASCEND_CXX11_ABI='yes'.*0 or 1"):
        hook.cxx11_abi({"LMCACHE_ASCEND_CXX11_ABI": "yes"})


def test_plan_without_cann_is_cpu_only_with_one_line(hook_without_default_toolkit):
    build, line = hook_without_default_toolkit.ascend_build_plan({})
    assert build is None and "\n" not in line
    assert "no CANN toolkit found" in line and "CPU backend only" in line and "set_env.sh" in line


def test_plan_backend_knob(hook_without_default_toolkit, tmp_path):
    hook = hook_without_default_toolkit
    env = {"ASCEND_HOME_PATH": str(make_toolkit(tmp_path)), "SOC_VERSION": "Ascend910B3"}
    build, line = hook.ascend_build_plan({**env, "LMCACHE_ASCEND_BACKEND": "cpu"})
    assert build is None and "LMCACHE_ASCEND_BACKEND=cpu" in line
    assert hook.ascend_build_plan({**env, "LMCACHE_ASCEND_BACKEND": "Ascend"}, torch_abi=lambda: 1)[0] is not None
    with pytest.raises(ValueError, match="LMCACHE_ASCEND_BACKEND='gpu' is invalid: use auto"):
        hook.ascend_build_plan({"LMCACHE_ASCEND_BACKEND": "gpu"})
    with pytest.raises(RuntimeError, match="LMCACHE_ASCEND_BACKEND=ascend but no CANN toolkit.*set_env.sh"):
        hook.ascend_build_plan({"LMCACHE_ASCEND_BACKEND": "ascend"})


def test_plan_with_cann_but_unknown_soc(hook_without_default_toolkit, tmp_path):
    hook = hook_without_default_toolkit
    env = {"ASCEND_HOME_PATH": str(make_toolkit(tmp_path))}
    build, line = hook.ascend_build_plan(env)
    assert build is None and "SOC_VERSION" in line and "CPU backend only" in line
    with pytest.raises(RuntimeError, match="SoC is unknown.*SOC_VERSION=Ascend910B3"):
        hook.ascend_build_plan({**env, "LMCACHE_ASCEND_BACKEND": "ascend"})


def test_plan_with_a_soc_the_toolkit_does_not_know(hook_without_default_toolkit, tmp_path):
    env = {"ASCEND_HOME_PATH": str(make_toolkit(tmp_path)), "SOC_VERSION": "Ascend910B9"}
    with pytest.raises(RuntimeError, match="SOC_VERSION=Ascend910B9.*knows Ascend310P3, Ascend910B3"):
        hook_without_default_toolkit.ascend_build_plan(env)


# -- a real build -------------------------------------------------------------------------------
def _pip_wheel(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    pytest.importorskip("hatchling", reason="building offline needs the build requirements (test extra)")
    pytest.importorskip("Cython")
    clean = {k: v for k, v in os.environ.items() if k not in _cann.TOOLKIT_HOME_VARS and k != "SOC_VERSION"}
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(tmp_path / "dist"), str(CORE)],
                          capture_output=True, text=True, env={**clean, **env}, timeout=900)


@pytest.mark.skipif(_cann.find_cann_toolkit() is not None, reason="this host has CANN: the wheel gets both backends")
def test_pip_wheel_without_cann_builds_the_cpu_backend_and_says_so_once(tmp_path):
    done = _pip_wheel(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if "lmcache-ascend:" in line]
    assert len(lines) == 1 and lines[0].startswith("lmcache-ascend: no CANN toolkit found"), lines
    (wheel,) = (tmp_path / "dist").glob("lmcache_ascend_core-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = json.loads(zf.read("lmcache_ascend/_native/build_info.json"))
    assert "lmcache_ascend/_native/liblmcache_ascend_cpu.so" in names
    assert not any("lmcache_ascend_npu" in n for n in names)
    assert info == {"backends": ["cpu"], "reason": lines[0]}


@pytest.mark.skipif(_cann.find_cann_toolkit() is not None, reason="this host has CANN")
def test_pip_wheel_forced_to_ascend_without_cann_fails_before_compiling(tmp_path):
    done = _pip_wheel(tmp_path, LMCACHE_ASCEND_BACKEND="ascend")
    assert done.returncode != 0
    assert "LMCACHE_ASCEND_BACKEND=ascend but no CANN toolkit was found" in done.stdout + done.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").glob("*.whl"))
