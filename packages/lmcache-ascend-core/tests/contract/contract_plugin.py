"""What makes a tests/contract directory self-contained (shared by both packages' contract suites).

Its tests are collected only when the directory (or a file in it) is named on the pytest command
line, as the contract sessions do: a run of the parent tests/ folder never picks them up by
accident. The `contract` marker is registered here, so nothing is needed in pytest.ini.
LMCACHE_ASCEND_CONTRACT_ROW (set by the contract sessions) is the compatibility-matrix row as JSON;
when it is set, the installed releases must be the row's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def make_hooks(here: Path):
    """The conftest hooks and the `contract_row` fixture for the contract directory `here`."""
    here = here.resolve()

    def inside(path) -> bool:
        return here in Path(str(path)).resolve().parents

    def named_on_command_line(config: pytest.Config) -> bool:
        for arg in config.args:
            path = Path(str(arg).split("::")[0]).resolve()
            if path == here or here in path.parents:
                return True
        return False

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line("markers", "contract: checks our code against an installed upstream release "
                                           "(tests/contract, run by the contract sessions)")

    def pytest_ignore_collect(collection_path: Path, config: pytest.Config):
        return True if inside(collection_path) and not named_on_command_line(config) else None

    def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
        for item in items:
            if inside(item.path):
                item.add_marker("contract")

    @pytest.fixture(scope="session")
    def contract_row() -> dict | None:
        text = os.environ.get("LMCACHE_ASCEND_CONTRACT_ROW")
        return json.loads(text) if text else None

    return pytest_configure, pytest_ignore_collect, pytest_collection_modifyitems, contract_row
