"""lmcache-ascend: KV-cache transfer kernels and pinned host memory for LMCache on Ascend and CPU."""
# Integration wheels (lmcache-ascend-vllm, lmcache-ascend-ms) add subpackages under
# lmcache_ascend.integration; extend_path lets them resolve from another install location too
# (editable installs).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
__all__ = ["get_num_threads", "set_num_threads", "usable_cpu_count", "__version__"]


def __getattr__(name: str):
    # The native bindings load on first use, not with the package: `lmcache-ascend doctor` must be able
    # to report a broken install or a bad LMCACHE_ASCEND_NUM_THREADS instead of dying on import.
    if name in ("get_num_threads", "set_num_threads", "usable_cpu_count"):
        from lmcache_ascend import transfer  # applies LMCACHE_ASCEND_NUM_THREADS

        return getattr(transfer._native, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
