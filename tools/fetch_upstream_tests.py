"""Fetch test files from a release's sdist through the package index pip is configured with.

    python tools/fetch_upstream_tests.py lmcache==0.5.6 tests/v1/test_memory_management.py --dest DIR

LMCache's own tests are run against our code but never copied into this repository: this pulls
them from the release's sdist at test time (sha256-checked against the index) into DIR. A path
that is a directory in the sdist brings every file under it.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path


def index_url() -> str:
    """PIP_INDEX_URL, else pip's configured global.index-url, else pip's default index."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)
        url = out.stdout.strip() if out.returncode == 0 else ""
    if not url:
        from pip._internal.models.index import PyPI

        url = PyPI.simple_url
    return url.rstrip("/")


def fetch_sdist(project: str, version: str) -> bytes:
    req = urllib.request.Request(f"{index_url()}/{project}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    name = f"{project}-{version}.tar.gz"
    entry = next((f for f in files if f["filename"] == name), None)
    if entry is None:
        raise SystemExit(f"{name} is not on the index {index_url()}")
    with urllib.request.urlopen(entry["url"], timeout=300) as resp:
        data = resp.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["hashes"]["sha256"]:
        raise SystemExit(f"{name}: sha256 {digest} does not match the index's {entry['hashes']['sha256']}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirement", help="project==version")
    parser.add_argument("paths", nargs="+", help="paths inside the sdist, relative to its top directory")
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args()
    project, version = args.requirement.split("==")
    wanted = [Path(p) for p in args.paths]
    stamp = args.dest / f".fetched-{project}-{version}"  # a directory may have been fetched in part
    if stamp.exists() and set(stamp.read_text().split()) >= {p.as_posix() for p in wanted}:
        return  # already fetched
    with tarfile.open(fileobj=io.BytesIO(fetch_sdist(project, version))) as tar:
        top = f"{project}-{version}"
        files = {m.name[len(top) + 1:]: m for m in tar.getmembers() if m.isfile() and m.name.startswith(top + "/")}
        for p in wanted:
            picked = [name for name in files if name == p.as_posix() or name.startswith(p.as_posix() + "/")]
            if not picked:
                raise SystemExit(f"{p} is not in the {project} {version} sdist")
            for name in picked:
                (args.dest / name).parent.mkdir(parents=True, exist_ok=True)
                (args.dest / name).write_bytes(tar.extractfile(files[name]).read())
    done = set(stamp.read_text().split()) if stamp.exists() else set()
    stamp.write_text("\n".join(sorted(done | {p.as_posix() for p in wanted})) + "\n")
    print(f"fetched {', '.join(map(str, wanted))} from {project} {version} into {args.dest}")


if __name__ == "__main__":
    main()
