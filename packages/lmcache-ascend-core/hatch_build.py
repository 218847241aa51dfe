"""Hatch build hook: compiles native/ into shared libraries and cythonizes the bindings against them.

Always: the CPU backend `liblmcache_ascend_cpu.so` (plain C++17, no Python, no torch); the Cython
extensions link to it with an $ORIGIN rpath so one copy of its state (the thread pool, the device
registrar) serves every binding module.
Where a CANN toolkit is found: also the Ascend backend `liblmcache_ascend_npu.so`, built by CMake
from native/ascend (AscendC kernels + host launchers) and shipped next to the CPU library.

Knobs (environment): LMCACHE_ASCEND_BACKEND=auto|cpu|ascend, SOC_VERSION, ASCEND_HOME_PATH,
LMCACHE_ASCEND_CXX11_ABI; see `ascend_build_plan`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

NATIVE_LIB = "lmcache_ascend_cpu"
ASCEND_LIB = "lmcache_ascend_npu"
BINDINGS = ["transfer", "memory", "codec"]  # lmcache_ascend/_native/<name>.pyx
CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-Wall", "-Wextra"]
# torch wheels on PyPI are built with the new libstdc++ ABI since torch 2.7 (both x86_64 and aarch64).
DEFAULT_CXX11_ABI = 1
HERE = Path(__file__).resolve().parent


def _load_cann_module():
    # The package is not installed while it is being built: load its stdlib-only detection module
    # by path (it sits in src/ both in the repository and in the sdist).
    name = "_lmcache_ascend_build_cann"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "src" / "lmcache_ascend" / "_cann.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


cann = _load_cann_module()


def _native_dir(root: Path) -> Path:
    # Inside an sdist the copy sits next to this file; in the repository it is two levels up.
    for candidate in (root / "native", root.parent.parent / "native"):
        if (candidate / "include" / "lmcache_ascend").is_dir():
            return candidate
    raise RuntimeError(f"native/ sources not found next to {root} or at the repository root")


def _torch_cxx11_abi() -> int | None:
    """The libstdc++ ABI of the torch importable in this build environment, if any."""
    try:
        import torch
    except Exception:  # no torch (build isolation) or a broken one: fall back to the knob / default
        return None
    return int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))


def cxx11_abi(env: Mapping[str, str], torch_abi: Callable[[], int | None] = _torch_cxx11_abi) -> tuple[int, str]:
    """(_GLIBCXX_USE_CXX11_ABI, where it came from). The explicit knob wins over torch's value."""
    raw = env.get("LMCACHE_ASCEND_CXX11_ABI", "").strip()
    if raw:
        if raw not in ("0", "1"):
            raise ValueError(f"LMCACHE_ASCEND_CXX11_ABI={raw!r} is invalid: use 0 or 1 (the "
                             "_GLIBCXX_USE_CXX11_ABI of the torch the library is used with), or unset it")
        return int(raw), "LMCACHE_ASCEND_CXX11_ABI"
    from_torch = torch_abi()
    if from_torch is not None:
        return from_torch, "torch"
    return DEFAULT_CXX11_ABI, "default"


class AscendBuild(NamedTuple):
    """What the Ascend backend is built for, and how. (A NamedTuple, not a dataclass: hatchling
    runs this file without registering it as a module, which dataclasses need.)"""
    toolkit: object  # cann.CannToolkit
    soc: str
    aicore_arch: int
    cxx11_abi: int

    def cmake_commands(self, native: Path, build_dir: Path) -> list[list[str]]:
        return [
            ["cmake", "-S", str(native / "ascend"), "-B", str(build_dir),
             f"-DASCEND_CANN_PACKAGE_PATH={self.toolkit.home}", f"-DSOC_VERSION={self.soc}",
             f"-DASCEND_AICORE_ARCH={self.aicore_arch}", f"-DLMCACHE_ASCEND_INCLUDE={native / 'include'}",
             f"-DGLIBCXX_USE_CXX11_ABI={self.cxx11_abi}", "-DCMAKE_BUILD_TYPE=Release"],
            # A bounded job count: a bare -j is unlimited with Makefiles, and AscendC compiles are large.
            ["cmake", "--build", str(build_dir), "-j", os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL")
             or str(len(os.sched_getaffinity(0)))],
        ]

    def summary(self) -> str:
        return (f"CANN {self.toolkit.version or '(version unknown)'} at {self.toolkit.home}, "
                f"SOC_VERSION={self.soc}, AI Core arch {self.aicore_arch}, "
                f"_GLIBCXX_USE_CXX11_ABI={self.cxx11_abi}")


def ascend_build_plan(env: Mapping[str, str] = os.environ,
                      torch_abi: Callable[[], int | None] = _torch_cxx11_abi) -> tuple[AscendBuild | None, str]:
    """Whether to build the Ascend backend: (the build, or None for CPU only; one line saying why).

    LMCACHE_ASCEND_BACKEND=auto (default) builds it where a CANN toolkit and the SoC are found,
    `cpu` never, `ascend` always (an error when something it needs is missing). Raises ValueError /
    RuntimeError, naming the setting and the fix, for settings that cannot work.
    """
    backend = env.get("LMCACHE_ASCEND_BACKEND", "").strip().lower() or "auto"
    if backend not in ("auto", "cpu", "ascend"):
        raise ValueError(f"LMCACHE_ASCEND_BACKEND={env['LMCACHE_ASCEND_BACKEND']!r} is invalid: use auto "
                         "(default), cpu or ascend")
    if backend == "cpu":
        return None, ("lmcache-ascend: built the CPU backend only (LMCACHE_ASCEND_BACKEND=cpu; unset it to "
                      "also build the Ascend backend where CANN is found)")
    toolkit = cann.find_cann_toolkit(env)
    if toolkit is None:
        if backend == "ascend":
            raise RuntimeError(f"LMCACHE_ASCEND_BACKEND=ascend but no CANN toolkit was found "
                               f"({cann.describe_toolkit_search(env)}): install the CANN toolkit and "
                               "`source <toolkit>/set_env.sh` (sets ASCEND_HOME_PATH) before building")
        return None, (f"lmcache-ascend: no CANN toolkit found ({cann.describe_toolkit_search(env)}), built "
                      "the CPU backend only; for the Ascend backend install CANN, `source <toolkit>/set_env.sh` "
                      "and reinstall")
    soc = cann.detect_soc_version(env)
    if soc is None:
        if backend == "ascend":
            raise RuntimeError(f"LMCACHE_ASCEND_BACKEND=ascend: CANN found at {toolkit.home} but the SoC is "
                               "unknown (SOC_VERSION unset and npu-smi did not answer): set SOC_VERSION, "
                               "e.g. SOC_VERSION=Ascend910B3 (see `npu-smi info`)")
        return None, (f"lmcache-ascend: CANN found at {toolkit.home} but the SoC is unknown (SOC_VERSION unset, "
                      "npu-smi did not answer), built the CPU backend only; set SOC_VERSION (e.g. "
                      "Ascend910B3) and reinstall for the Ascend backend")
    soc = cann.resolve_soc(toolkit, soc)
    arch = cann.aicore_arch(toolkit, soc)
    if arch is None:
        known = cann.known_socs(toolkit)
        raise RuntimeError(f"SOC_VERSION={soc}: no usable AIC_version in "
                           f"{toolkit.platform_config_dir / (soc + '.ini')}; this toolkit knows "
                           f"{', '.join(known) if known else 'no SoC (platform_config is empty or missing)'}. "
                           "Set SOC_VERSION to one of those, or LMCACHE_ASCEND_BACKEND=cpu to skip the "
                           "Ascend backend")
    abi, _ = cxx11_abi(env, torch_abi)
    build = AscendBuild(toolkit=toolkit, soc=soc, aicore_arch=arch, cxx11_abi=abi)
    return build, f"lmcache-ascend: building the CPU and Ascend backends ({build.summary()})"


class NativeBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        native = _native_dir(root)
        # Decide first: a setting that cannot work fails before anything is compiled.
        ascend, decision = ascend_build_plan(os.environ)
        if ascend is not None and shutil.which("cmake") is None:
            raise RuntimeError("building the Ascend backend needs cmake >= 3.16 on PATH: `pip install cmake` "
                               "(or your OS package), or LMCACHE_ASCEND_BACKEND=cpu to skip it")
        # A private build directory per build: concurrent builds of one checkout must not share objects.
        (root / "build").mkdir(exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="native-", dir=root / "build"))
        self._out = out
        try:
            libs = [self._build_native_library(native, out)]
            if ascend is not None:
                libs.append(self._build_ascend_library(ascend, native, out))
            extensions = self._build_bindings(root, native, out)
            info = self._write_build_info(out, ascend, decision)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # finalize() is not called for a failed build
            raise

        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        for path in [*libs, *extensions, info]:
            build_data["force_include"][str(path)] = f"lmcache_ascend/_native/{path.name}"
        self.app.display_info(decision)

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)

    def _build_native_library(self, native: Path, out: Path) -> Path:
        cxx = shlex.split(os.environ.get("CXX", "c++"))
        sources = sorted((native / "cpu").glob("*.cpp"))
        lib = out / f"lib{NATIVE_LIB}.so"
        # -ldl: the Ascend device registration loads the CANN runtime with dlopen (libc has it on
        # glibc >= 2.34; older hosts need the separate library).
        cmd = [*cxx, *CXXFLAGS, "-shared", "-pthread", f"-I{native / 'include'}",
               *map(str, sources), "-o", str(lib), "-Wl,-soname,lib" + NATIVE_LIB + ".so", "-ldl"]
        self.app.display_debug("lmcache-ascend: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
        return lib

    def _build_ascend_library(self, ascend: AscendBuild, native: Path, out: Path) -> Path:
        build_dir = out / "ascend"
        for cmd in ascend.cmake_commands(native, build_dir):
            self.app.display_debug("lmcache-ascend: " + shlex.join(cmd))
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"building the Ascend backend failed at `{shlex.join(cmd)}` (exit "
                                   f"{done.returncode}; {ascend.summary()}). Its output is above. Check that "
                                   f"CANN's environment is loaded (`source {ascend.toolkit.home}/../set_env.sh`, "
                                   f"or {ascend.toolkit.home}/set_env.sh on CANN >= 8.5) and that SOC_VERSION "
                                   "matches the NPU; LMCACHE_ASCEND_BACKEND=cpu builds without it")
        lib = build_dir / f"lib{ASCEND_LIB}.so"
        if not lib.is_file():
            raise RuntimeError(f"CMake finished but produced no {lib} (native/ascend/CMakeLists.txt must build "
                               f"the target lib{ASCEND_LIB}.so into its build directory)")
        return lib

    def _write_build_info(self, out: Path, ascend: AscendBuild | None, decision: str) -> Path:
        # Read back by lmcache_ascend._cann.build_info() (and `lmcache-ascend doctor`).
        info = {"backends": ["cpu"], "reason": decision}
        if ascend is not None:
            info.update(backends=["cpu", "ascend"], cann_version=ascend.toolkit.version,
                        cann_home=str(ascend.toolkit.home), soc_version=ascend.soc,
                        aicore_arch=ascend.aicore_arch, cxx11_abi=ascend.cxx11_abi)
        path = out / "build_info.json"
        path.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        return path

    def _build_bindings(self, root: Path, native: Path, out: Path) -> list[Path]:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
        from setuptools.command.build_ext import build_ext

        src = root / "src"
        extensions = [
            Extension(
                f"lmcache_ascend._native.{name}",
                [str(src / "lmcache_ascend" / "_native" / f"{name}.pyx")],
                include_dirs=[str(native / "include")],
                language="c++",
                extra_compile_args=["-std=c++17", "-O3"],
                library_dirs=[str(out)],
                libraries=[NATIVE_LIB],
                extra_link_args=["-Wl,-rpath,$ORIGIN"],
            )
            for name in BINDINGS
        ]
        modules = cythonize(
            extensions,
            include_path=[str(src)],
            build_dir=str(out / "cython"),
            compiler_directives={"language_level": 3},
            quiet=True,
        )
        dist = Distribution({"name": "lmcache-ascend-core", "ext_modules": modules})
        cmd = build_ext(dist)
        cmd.build_lib = str(out / "lib")
        cmd.build_temp = str(out / "temp")
        cmd.ensure_finalized()
        cmd.run()
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        return [out / "lib" / "lmcache_ascend" / "_native" / f"{name}{suffix}" for name in BINDINGS]
