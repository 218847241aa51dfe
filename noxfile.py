"""Build the core wheel once, then test it in fresh environments.

    nox              # build + every session that can run on this machine (what .ci/run does)
    nox -l           # list sessions
    nox -s bench     # the benchmarks (writes docs/benchmarks.md)

Sessions install the wheel from dist/, never the source tree, so tests see what users install.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
DIST = ROOT / "dist"
CORE = ROOT / "packages" / "lmcache-ascend-core"

nox.options.sessions = ["build", "install_check", "tests_core"]
nox.options.error_on_missing_interpreters = True

# One row per supported stack. The compatibility-matrix issue grows this table; every session
# below reads its pins from here.
MATRIX = [
    {
        "name": "lmcache056",
        "python": "3.11",
        # Only CPU build of torch on this machine's wheel folder; any other pin pulls a CUDA build.
        "torch": "torch==2.13.0",
        # Current LMCache: its torch fallback is the peer our kernels are checked against.
        "lmcache": "lmcache==0.5.6",
        "runs_here": True,
    },
]
ROW = {row["name"]: row for row in MATRIX}

# What LMCache 0.5.6 needs on a CPU host to import and call its torch fallback kernels
# (lmcache.v1.platform.torch_ops). Its declared dependencies include CUDA-only wheels (cupy,
# cuda-python, cufile, nvtx) that are never imported there, so it is installed with --no-deps plus
# this list (numba: torch_ops imports it; numpy<=2.2.6: LMCache's own pin; the rest: imported
# when a fallback op resolves its format spec).
LMCACHE_CPU_DEPS = [
    "numba", "numpy<=2.2.6", "cachetools", "pyyaml", "requests", "prometheus_client>=0.18.0,<=0.24.1",
    "py-cpuinfo", "psutil", "aiohttp", "sortedcontainers",
]


def _pip_args() -> list[str]:
    # The CPU torch wheel lies in a local folder on this project's machines.
    links = os.environ.get("PIP_FIND_LINKS") or ("/opt/wheels" if Path("/opt/wheels").is_dir() else "")
    return ["--find-links", links] if links else []


def core_wheel() -> Path:
    wheels = sorted(DIST.glob("lmcache_ascend_core-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError("no core wheel in dist/: run `nox -s build` first")
    return wheels[-1]


def print_versions(session: nox.Session, *modules: str) -> None:
    code = ("import importlib, sys, platform; print('python', sys.version.split()[0], platform.machine());"
            f"[print(m, getattr(importlib.import_module(m), '__version__', '?')) for m in {list(modules)!r}]")
    session.run("python", "-c", code, silent=False)


def run_tests(session: nox.Session, tests: Path, *modules: str) -> None:
    """The one test runner: from a temp dir, so only the installed wheel is importable."""
    print_versions(session, *modules)
    session.chdir(session.create_tmp())
    session.run("python", "-m", "pytest", str(tests), "-c", str(ROOT / "pytest.ini"),
                "--rootdir", str(tests), "-p", "no:cacheprovider", *session.posargs)


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Build the core wheel once into dist/ (CPU backend; the Ascend backend where CANN is found)."""
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob("lmcache_ascend_core-*.whl"):
        old.unlink()
    session.install("pip>=24")
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(DIST), str(CORE), *_pip_args())


@nox.session(python="3.11")
def install_check(session: nox.Session) -> None:
    """A user's first step: pip install the core from source, no torch, no CANN; both surfaces import."""
    session.install(str(CORE), *_pip_args())
    session.chdir(session.create_tmp())
    session.run("python", "-c", "import lmcache_ascend.ops, lmcache_ascend.c_ops, lmcache_ascend as m; "
                "print('lmcache_ascend', m.__version__, 'threads', m.get_num_threads())")


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def tests_core(session: nox.Session) -> None:
    """Core wheel against real torch and LMCache 0.5.6's torch fallback."""
    row = ROW["lmcache056"]
    session.install(row["torch"], *_pip_args())
    session.install(f"{core_wheel()}[test]", *_pip_args())
    session.install("--no-deps", row["lmcache"])
    if LMCACHE_CPU_DEPS:
        session.install(*LMCACHE_CPU_DEPS, *_pip_args())
    session.env["LMCACHE_ASCEND_REQUIRE_LMCACHE"] = "1"  # the fallback comparison must run, not skip
    run_tests(session, CORE / "tests", "torch", "lmcache_ascend", "lmcache")
