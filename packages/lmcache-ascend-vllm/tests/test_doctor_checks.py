"""The doctor check this wheel registers (entry-point group lmcache_ascend.doctor_checks): run as
users run it, through the core's installed `lmcache-ascend doctor` console script, against a fake
vllm-ascend laid out as its releases are (package metadata and files: importing it needs torch_npu)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmcache_ascend.integration.vllm import doctor_checks
from lmcache_ascend.integration.vllm.patches.patch_vllm_ascend_connector_name import VLLM_ASCEND_MODULE

SCRIPT = Path(sys.executable).with_name("lmcache-ascend")


def doctor_checks_by_name(env: dict) -> dict[str, dict]:
    assert SCRIPT.is_file(), f"console script {SCRIPT} is not installed (lmcache-ascend-core)"
    done = subprocess.run([str(SCRIPT), "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def write_dist(site: Path, name: str, version: str) -> None:
    """Installed-package metadata as pip writes it (what importlib.metadata reads)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def fake_vllm_ascend(site: Path, version: str, registers_the_name: bool) -> None:
    """vllm-ascend's metadata and package directory; releases that register LMCacheAscendConnector
    ship its module."""
    write_dist(site, "vllm-ascend", version)
    package = site / "vllm_ascend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if registers_the_name:
        module = site.joinpath(*VLLM_ASCEND_MODULE.split(".")).with_suffix(".py")
        module.parent.mkdir(parents=True)
        module.write_text("import lmcache_ascend\n")


def test_the_check_is_registered_with_the_doctor():
    registered = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="lmcache_ascend.doctor_checks")}
    assert registered.get("vllm_ascend_connector") == \
        "lmcache_ascend.integration.vllm.doctor_checks:vllm_ascend_connector_name", registered


@pytest.mark.parametrize("plugins, left_out", [
    (None, None), ("ascend,ascend_kv_connector,lmcache_ascend", None), ("ascend", "ascend_kv_connector,lmcache_ascend"),
    ("ascend,ascend_kv_connector", "lmcache_ascend"), ("", "ascend_kv_connector,lmcache_ascend"),
])
def test_vllm_ascends_connector_name_needs_both_plugins(tmp_path, plugins, left_out):
    """vllm-ascend's LMCacheAscendConnector reaches our connector only with vllm-ascend's connector
    registration and lmcache-ascend-vllm's vLLM plugin both loaded."""
    site = tmp_path / "site"
    fake_vllm_ascend(site, "0.23.0", registers_the_name=True)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    env.update(PYTHONPATH=str(site), **({} if plugins is None else {"VLLM_PLUGINS": plugins}))
    check = doctor_checks_by_name(env).get("package.vllm_ascend_connector")
    if left_out is None:
        assert check is None
        return
    assert check["status"] == "warn" and check["details"] == {"VLLM_PLUGINS": plugins,
                                                              "left_out": left_out.split(",")}
    assert f"leaves out {left_out.replace(',', ', ')}" in check["message"]
    assert check["fix"].startswith(f"add them: VLLM_PLUGINS={plugins + ',' if plugins else ''}{left_out} ")


def test_vllm_ascend_without_that_name(tmp_path):
    site = tmp_path / "site"
    fake_vllm_ascend(site, "0.11.0", registers_the_name=False)  # older releases: nothing to serve
    env = dict(os.environ, PYTHONPATH=str(site), VLLM_PLUGINS="ascend")
    assert "package.vllm_ascend_connector" not in doctor_checks_by_name(env)


def test_no_vllm_ascend_means_nothing_to_check():
    if doctor_checks.registers_lmcache_ascend_connector():
        pytest.skip("this environment has a vllm-ascend that registers the name")
    assert doctor_checks.vllm_ascend_connector_name({"VLLM_PLUGINS": "ascend"}) == []
