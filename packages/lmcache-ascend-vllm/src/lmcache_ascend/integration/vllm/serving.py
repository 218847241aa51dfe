"""Start vLLM with the connector and time requests: shared by the demo, the tests and the benchmarks.

Call from under `if __name__ == "__main__":`: vLLM's engine runs in child processes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

CONNECTOR = "LMCacheAscendConnectorV1Dynamic"
MODULE = "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"


@dataclass
class Answer:
    ttft_s: float          # vLLM's own first-token latency (arrival to first token)
    token_ids: list[int]   # greedy output
    cached_tokens: int     # prompt tokens not computed (served from LMCache)


def kv_transfer_config(lmcache: dict[str, Any]) -> Any:
    """vLLM's KVTransferConfig for our connector, LMCache settings given without the prefix."""
    from vllm.config import KVTransferConfig

    return KVTransferConfig(kv_connector=CONNECTOR, kv_role="kv_both", kv_connector_module_path=MODULE,
                            kv_connector_extra_config={f"lmcache.{k}": v for k, v in lmcache.items()})


def start_llm(model: str, lmcache: Optional[dict[str, Any]], *, kv_cache_gib: int = 1,
              max_model_len: int = 8192) -> Any:
    """vLLM on this host's platform; with our connector unless lmcache is None. vLLM's own prefix
    cache is off, so what is reused comes from LMCache."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if lmcache is not None:
        kwargs["kv_transfer_config"] = kv_transfer_config(lmcache)
    return LLM(model=model, max_model_len=max_model_len, enforce_eager=True, dtype="bfloat16",
               enable_prefix_caching=False, disable_log_stats=False, seed=0, **kwargs)


def ask(llm: Any, prompt: str, max_tokens: int = 16) -> Answer:
    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)[0]
    return Answer(ttft_s=out.metrics.first_token_latency, token_ids=list(out.outputs[0].token_ids),
                  cached_tokens=out.num_cached_tokens or 0)


@contextlib.contextmanager
def local_redis() -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server on a free loopback port for the duration of the block: (url, process)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
