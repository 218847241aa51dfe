"""Hatch build hook: compiles native/ into a shared library and cythonizes the bindings against it.

The native library is plain C++17 (no Python, no torch); the Cython extensions link to it with an
$ORIGIN rpath so one copy of its state (the thread pool) serves every binding module.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

NATIVE_LIB = "lmcache_ascend_cpu"
BINDINGS = ["transfer", "memory"]  # lmcache_ascend/_native/<name>.pyx
CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-Wall", "-Wextra"]


def _native_dir(root: Path) -> Path:
    # Inside an sdist the copy sits next to this file; in the repository it is two levels up.
    for candidate in (root / "native", root.parent.parent / "native"):
        if (candidate / "include" / "lmcache_ascend").is_dir():
            return candidate
    raise RuntimeError(f"native/ sources not found next to {root} or at the repository root")


class NativeBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        native = _native_dir(root)
        # A private build directory per build: concurrent builds of one checkout must not share objects.
        (root / "build").mkdir(exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="native-", dir=root / "build"))
        self._out = out

        lib = self._build_native_library(native, out)
        extensions = self._build_bindings(root, native, out)

        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        for path in [lib, *extensions]:
            build_data["force_include"][str(path)] = f"lmcache_ascend/_native/{path.name}"
        self.app.display_info("lmcache-ascend: built the CPU backend")

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)

    def _build_native_library(self, native: Path, out: Path) -> Path:
        cxx = shlex.split(os.environ.get("CXX", "c++"))
        sources = sorted((native / "cpu").glob("*.cpp"))
        lib = out / f"lib{NATIVE_LIB}.so"
        cmd = [*cxx, *CXXFLAGS, "-shared", "-pthread", f"-I{native / 'include'}",
               *map(str, sources), "-o", str(lib), "-Wl,-soname,lib" + NATIVE_LIB + ".so"]
        self.app.display_info("lmcache-ascend: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
        return lib

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
