"""Checks of the user's LMCache settings, before LMCache starts (it would log and recompute).

vLLM passes `kv_connector_extra_config`; LMCache reads the keys that start with "lmcache." and
only warns about the rest. A typo there silently disables what the user asked for, so unknown
keys and unusable values are errors here, naming the key and the accepted values.
"""
from __future__ import annotations

import difflib
import os
from typing import Any

PREFIX = "lmcache."
# Keys LMCache's vLLM adapter reads from kv_connector_extra_config without the prefix.
ADAPTER_KEYS = {"discard_partial_chunks", "skip_last_n_tokens", "lmcache_rpc_port", "lmcache.max_tokens_per_load"}
# LMCache features that need CUDA kernels lmcache-ascend does not provide.
UNSUPPORTED = {"enable_blending": "CacheBlend", "use_gpu_connector_v3": "the CUDA v3 connector"}


def _lmcache_keys() -> set[str]:
    from lmcache_ascend.integration.vllm.lmcache_compat import lmcache_setting_names

    return lmcache_setting_names()


def validate_extra_config(extra: dict[str, Any] | None) -> None:
    """Raise ValueError for an unknown or unusable kv_connector_extra_config entry."""
    if not extra:
        return
    if not isinstance(extra, dict):
        raise ValueError(f"kv_connector_extra_config must be a JSON object, got {type(extra).__name__}: {extra!r}")
    known = _lmcache_keys()
    for key, value in extra.items():
        if key in ADAPTER_KEYS:
            continue
        if not key.startswith(PREFIX):
            raise ValueError(f"kv_connector_extra_config key {key!r} is not read by LMCache: LMCache settings go "
                             f"there as 'lmcache.<setting>' (e.g. 'lmcache.max_local_cpu_size'); adapter keys: "
                             f"{sorted(ADAPTER_KEYS)}")
        name = key[len(PREFIX):]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
            raise ValueError(f"kv_connector_extra_config key {key!r}: LMCache has no setting {name!r}{hint} "
                             f"(settings: {', '.join(sorted(known))})")
        if name in UNSUPPORTED and str(value).lower() in ("1", "true", "yes"):
            raise ValueError(f"kv_connector_extra_config {key}={value!r}: {UNSUPPORTED[name]} is not supported by "
                             f"lmcache-ascend; set it to false")


def check_local_cpu_size(gib: float, source: str) -> None:
    """A local CPU pool the host cannot hold fails now, with the fix, not later inside LMCache."""
    try:
        gib = float(gib)
    except (TypeError, ValueError):
        raise ValueError(f"{source}={gib!r} must be a number of GiB (e.g. 2.0)") from None
    if gib < 0:
        raise ValueError(f"{source}={gib} must be >= 0 GiB")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    if gib >= total:
        raise ValueError(f"{source}={gib:g} GiB cannot be provided: this host has {total:.1f} GiB of RAM in all. "
                         f"Lower it (LMCache's max_local_cpu_size; e.g. {max(total / 4, 0.5):.1f}) and leave room "
                         "for the model and vLLM's own KV cache")
