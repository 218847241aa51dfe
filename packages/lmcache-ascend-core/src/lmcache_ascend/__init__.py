"""lmcache-ascend: KV-cache transfer kernels and pinned host memory for LMCache on Ascend and CPU."""
# Integration wheels (lmcache-ascend-vllm, lmcache-ascend-ms) add subpackages under
# lmcache_ascend.integration; extend_path lets them resolve from another install location too
# (editable installs).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from lmcache_ascend import envs as _envs
from lmcache_ascend._native.transfer import get_num_threads, set_num_threads, usable_cpu_count

set_num_threads(_envs.num_threads())

__version__ = "0.1.0"
__all__ = ["get_num_threads", "set_num_threads", "usable_cpu_count", "__version__"]
