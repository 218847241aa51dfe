"""Contract checks against the installed vLLM and LMCache releases (issue 5). The collection rules,
the marker and the `contract_row` fixture, and the LMCache source reader, come from the core
package's contract suite (packages/lmcache-ascend-core/tests/contract), shared by path."""
import os
import sys
from pathlib import Path

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")  # LMCache's engine would report usage to its server

HERE = Path(__file__).parent
CORE_CONTRACT = HERE.parents[2] / "lmcache-ascend-core" / "tests" / "contract"
sys.path[:0] = [str(HERE), str(CORE_CONTRACT)]

from contract_plugin import make_hooks  # noqa: E402

pytest_configure, pytest_ignore_collect, pytest_collection_modifyitems, contract_row = make_hooks(HERE)
