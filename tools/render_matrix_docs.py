"""What noxfile.py's MATRIX generates: docs/compatibility.md and the core's _matrix.json.

Imported by the noxfile's `docs` session (which checks or writes the files); it reads the rows'
attributes only, so it needs neither nox nor the noxfile.
"""
from __future__ import annotations

import json
from pathlib import Path

# What `lmcache-ascend doctor` matches an install against (the wheel's _matrix.json), in this order.
MATRIX_JSON_FIELDS = ["name", "status", "checked", "lmcache", "vllm", "vllm_ascend", "vllm_mindspore", "torch",
                      "torch_npu", "mindspore", "python"]

WHAT_RUNS = {
    "end-to-end": "end to end here: a real vLLM engine with our connector, Redis, the benchmarks",
    "contract": "contract-checked here: that release's vLLM and LMCache code installed, our code checked "
                "against their interfaces; needs Ascend hardware to run",
}


def generated_files(rows, root: Path) -> dict[Path, str]:
    """Each generated file's path (under the repository `root`) and its text."""
    table = {"rows": [{k: getattr(row, k) for k in MATRIX_JSON_FIELDS} for row in rows]}
    return {
        root / "docs" / "compatibility.md": render_compatibility(rows),
        root / "packages" / "lmcache-ascend-core" / "src" / "lmcache_ascend" / "_matrix.json":
            json.dumps(table, indent=1) + "\n",
    }


def install_line(row) -> str:
    if row.checked == "end-to-end":
        return f"pip install {row.vllm_dist}=={row.vllm} lmcache=={row.lmcache} packages/lmcache-ascend-vllm"
    if row.vllm_mindspore:
        return (f"pip install mindspore=={row.mindspore} vllm-mindspore (r{row.vllm_mindspore}) "
                f"lmcache=={row.lmcache} packages/lmcache-ascend-core  # + the MindSpore wheel (not built yet)")
    # vLLM, vllm-ascend, torch and torch-npu come with the release's image (docker/ builds on it).
    ours = "packages/lmcache-ascend-vllm" if row.connector else \
        "packages/lmcache-ascend-core  # the ops only: the connector needs lmcache 0.3.7 or 0.5 (notes)"
    return (f"in the quay.io/ascend/vllm-ascend:v{row.vllm_ascend} image: "
            f"pip install lmcache=={row.lmcache} {ours}")


def render_compatibility(rows) -> str:
    def cell(value: str | None) -> str:
        return value or "-"

    lines = [
        "# Compatibility",
        "",
        "<!-- Generated from the MATRIX table in noxfile.py by `nox -s docs -- --write`; CI fails when stale. -->",
        "",
        "| row | LMCache | vLLM | vllm-ascend / vllm-mindspore | torch / torch-npu / MindSpore | Python | upstream | checked here | session |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        plugin = row.vllm_ascend and f"vllm-ascend {row.vllm_ascend}" or (
            row.vllm_mindspore and f"vllm-mindspore r{row.vllm_mindspore}") or row.vllm_dist
        framework = (f"MindSpore {row.mindspore}" if row.mindspore else
                     " / ".join(v for v in (row.torch, row.torch_npu) if v) or "as vllm-ascend pins")
        sessions = [row.session_name, row.npu_session_name]
        lines.append(f"| {row.name} | {row.lmcache} | {row.vllm} | {cell(plugin)} | {framework} | "
                     f"{row.python} | {row.status} | {row.checked} | "
                     f"{', '.join(f'`{s}`' for s in sessions if s)} |")
    notes = [f"- **{row.name}**: {row.notes}" for row in rows if row.notes]
    lines += ["", "## Notes per row", "", *notes] if notes else []
    lines += ["", "What each level means:", ""]
    lines += [f"- **{level}**: {text}." for level, text in WHAT_RUNS.items()]
    lines += ["", "## Install lines", ""]
    for row in rows:
        lines += [f"- {row.name}: `{install_line(row)}`"]
    lines += ["", "Every row: `lmcache-ascend doctor` then reports the installed versions against this table.", ""]
    return "\n".join(lines)
