"""Build-time check of an lmcache-ascend image: are the wheels installed the way the image promises?

Runs `lmcache-ascend doctor --json` and prints its report. The build fails only on what the build
itself decides: the console script exists, the install and the CPU backend are sound, the Ascend
backend was compiled into the wheel (where the image promises it: the build record lists it and
the library file is there), and the named distributions and modules are installed. Whether that
library loads is printed, not enforced: it links the driver's libascend_hal.so, which is mounted
into the running container, not into `docker build`. Likewise the checks that describe the
machine the container will run on (NPUs, driver, memlock, registration, the trial pool). Run
`lmcache-ascend doctor` in the running container for those.

Standard library only; never imports torch, vLLM or LMCache (they need the driver at import time).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys

# Doctor checks whose outcome the image build decides; anything but "ok" fails the build.
BUILD_CHECKS = ("install", "backend.cpu")
# The trial pool says nothing about the running container here; 4 KiB keeps it cheap and within a
# build sandbox's usual RLIMIT_MEMLOCK (often 64 KiB), so its printed line is not a misleading warning.
TRIAL_POOL = "4KiB"


def run_doctor() -> dict:
    exe = shutil.which("lmcache-ascend")
    if exe is None:
        raise SystemExit("smoke check: the `lmcache-ascend` command is not on PATH, so lmcache-ascend-core is not "
                         "installed (or its console script is missing): check the pip install step above")
    done = subprocess.run([exe, "doctor", "--json", "--pool-size", TRIAL_POOL],
                          capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"smoke check: `lmcache-ascend doctor --json` exited {done.returncode} without a JSON "
                         f"report.\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}") from None


def problems(report: dict, expect_backend: str, dists: list[str], modules: list[str]) -> list[str]:
    checks = {c["name"]: c for c in report.get("checks", [])}
    found = []
    for name in BUILD_CHECKS + ("backend.ascend",):
        if name not in checks:
            found.append(f"doctor reported no {name!r} check")
    for name in BUILD_CHECKS:
        check = checks.get(name)
        if check is not None and check["status"] != "ok":
            fix = f" (fix: {check['fix']})" if check.get("fix") else ""
            found.append(f"{name} is {check['status']}: {check['message']}{fix}")
    ascend = checks.get("backend.ascend")
    if expect_backend == "ascend" and ascend is not None:
        details = ascend.get("details", {})
        build = details.get("build") or {}
        if "ascend" not in build.get("backends", []):
            found.append(f"the wheel was built without the Ascend backend: {build.get('reason') or 'no build record'}")
        elif details.get("library") is None:
            found.append("the wheel's build record lists the Ascend backend but liblmcache_ascend_npu.so is not "
                         "installed: reinstall lmcache-ascend-core")
    for dist in dists:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"distribution {dist!r} is not installed")
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)  # locates it; only its parent packages are imported
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            found.append(f"module {module!r} cannot be found on sys.path")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-backend", choices=("cpu", "ascend"), default="ascend",
                        help="ascend: the wheel must contain the Ascend backend (default)")
    parser.add_argument("--expect-dist", action="append", default=[], metavar="NAME",
                        help="a distribution that must be installed (repeatable)")
    parser.add_argument("--expect-module", action="append", default=[], metavar="NAME",
                        help="a module that must be importable, located without importing it (repeatable)")
    args = parser.parse_args(argv)

    report = run_doctor()
    print(f"lmcache-ascend doctor {report.get('version')} (at image build time; host checks are informative "
          "only here):")
    for check in report.get("checks", []):
        print(f"  {check['status']:<4}  {check['name']}  {check['message']}")
    # The Ascend library's load result above (backend.ascend) is information only: see the docstring.
    found = problems(report, args.expect_backend, args.expect_dist, args.expect_module)
    if found:
        print("smoke check FAILED:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    print(f"smoke check passed (backend: {args.expect_backend}; installed: "
          f"{', '.join(args.expect_dist + args.expect_module) or 'core only'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
