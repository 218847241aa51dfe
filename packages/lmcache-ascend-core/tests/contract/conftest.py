"""Contract checks against the installed LMCache release (issue 5); see contract_plugin.py for when
they are collected and LMCACHE_ASCEND_CONTRACT_ROW."""
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # contract_plugin.py and lmcache_call_sites.py

from contract_plugin import make_hooks  # noqa: E402

pytest_configure, pytest_ignore_collect, pytest_collection_modifyitems, contract_row = make_hooks(HERE)
