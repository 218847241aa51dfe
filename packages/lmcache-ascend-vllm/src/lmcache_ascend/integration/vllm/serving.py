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
from typing import Any, Iterator, Mapping, Optional, Union

CONNECTOR = "LMCacheAscendConnectorV1Dynamic"
MODULE = "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"


@dataclass
class Answer:
    ttft_s: float          # vLLM's own first-token latency (arrival to first token)
    token_ids: list[int]   # greedy output
    cached_tokens: int     # prompt tokens not computed (served from LMCache)
    top_logprobs: list[list[tuple[int, float]]]  # per output token, the two likeliest [(token, logprob), ...]


# bf16 logits round to steps of 1/16-1/8 at the magnitudes the demo model gives, so a recomputed and
# a loaded prefill, or vLLM with and without a KV connector, can differ by a step or two and flip
# an exact or near tie (measured: a tie at -1.057/-1.057 in a cold run, 0.125 apart warm).
TIE_NATS = 0.25


def greedy_difference(a: Union[Answer, Mapping[str, Any]], b: Union[Answer, Mapping[str, Any]],
                      tie_nats: float = TIE_NATS) -> Optional[str]:
    """None when two greedy outputs are the same computation up to rounding: token by token equal
    with logprobs within tie_nats, until a step where they part at a near tie, i.e. in one run the
    other's token was within tie_nats of the top and the other run gives it that logprob too (from
    there on their contexts differ, so nothing more is compared). Otherwise, what differs. Corrupted
    KV moves the distribution at every step, so it fails this."""
    def field(x: Any, name: str) -> Any:
        return x[name] if isinstance(x, Mapping) else getattr(x, name)

    def parts_at_tie(t_here: int, lp_here: dict, t_there: int, lp_there: dict) -> bool:
        return (t_there in lp_here and lp_here[t_here] - lp_here[t_there] <= tie_nats
                and abs(lp_there[t_there] - lp_here[t_there]) <= tie_nats)

    tokens_a, tokens_b = field(a, "token_ids"), field(b, "token_ids")
    if len(tokens_a) != len(tokens_b):
        return f"{len(tokens_a)} tokens vs {len(tokens_b)}"
    for step, (ta, tb, tops_a, tops_b) in enumerate(zip(tokens_a, tokens_b, field(a, "top_logprobs"),
                                                         field(b, "top_logprobs"))):
        lp_a, lp_b = dict(map(tuple, tops_a)), dict(map(tuple, tops_b))
        if ta == tb:
            if abs(lp_a[ta] - lp_b[tb]) > tie_nats:
                return f"step {step}: token {ta} has logprob {lp_a[ta]:.3f} vs {lp_b[tb]:.3f}"
            continue
        if parts_at_tie(ta, lp_a, tb, lp_b) or parts_at_tie(tb, lp_b, ta, lp_a):
            return None
        return f"step {step}: token {ta} vs {tb} (top two {tops_a} vs {tops_b})"
    return None


def kv_transfer_config(lmcache: dict[str, Any]) -> Any:
    """vLLM's KVTransferConfig for our connector, LMCache settings given without the prefix."""
    from vllm.config import KVTransferConfig

    return KVTransferConfig(kv_connector=CONNECTOR, kv_role="kv_both", kv_connector_module_path=MODULE,
                            kv_connector_extra_config={f"lmcache.{k}": v for k, v in lmcache.items()})


# LMCache 0.5.6's MP connector waits up to lmcache.mp.mq_timeout (default 300 s) for each blocking
# request to its server, and vLLM kills the engine when one model step takes longer than
# VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (default 300 s). A store submitted in the ~20 s before the
# connector's heartbeat notices a dead server waits the whole mq_timeout: with the defaults that
# kills vLLM (measured on a loaded host, docs/mp.md). 60 s leaves room for two such waits in a step.
MP_MQ_TIMEOUT_S = 60


def mp_kv_transfer_config(port: int, transfer_mode: Optional[str] = None) -> Any:
    """vLLM's KVTransferConfig for LMCache's multiprocess mode: upstream's LMCacheMPConnector talking
    to an `lmcache server` on loopback `port`; transfer_mode None = the device's default
    (engine-driven on the CPU), or "lmcache_driven"."""
    from vllm.config import KVTransferConfig

    extra: dict[str, Any] = {"lmcache.mp.host": "tcp://127.0.0.1", "lmcache.mp.port": port,
                             "lmcache.mp.mq_timeout": MP_MQ_TIMEOUT_S}
    if transfer_mode:
        extra["lmcache.mp.mp_transfer_mode"] = transfer_mode
    return KVTransferConfig(kv_connector="LMCacheMPConnector", kv_role="kv_both", kv_connector_extra_config=extra)


def start_llm(model: str, lmcache: Optional[dict[str, Any]], *, kv_cache_gib: int = 1,
              max_model_len: int = 8192, mp: Optional[dict[str, Any]] = None) -> Any:
    """vLLM on this host's platform; with our connector unless lmcache is None, or with LMCache's
    multiprocess connector when mp ({"port": ..., "transfer_mode": ...}) is given. vLLM's own prefix
    cache is off, so what is reused comes from LMCache."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if mp is not None:
        kwargs["kv_transfer_config"] = mp_kv_transfer_config(mp["port"], mp.get("transfer_mode"))
    elif lmcache is not None:
        kwargs["kv_transfer_config"] = kv_transfer_config(lmcache)
    return LLM(model=model, max_model_len=max_model_len, enforce_eager=True, dtype="bfloat16",
               enable_prefix_caching=False, disable_log_stats=False, seed=0, **kwargs)


def ask(llm: Any, prompt: str, max_tokens: int = 16) -> Answer:
    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=2),
                       use_tqdm=False)[0]
    top = [sorted(((t, lp.logprob) for t, lp in step.items()), key=lambda tl: -tl[1])[:2]
           for step in out.outputs[0].logprobs]
    return Answer(ttft_s=out.metrics.first_token_latency, token_ids=list(out.outputs[0].token_ids),
                  cached_tokens=out.num_cached_tokens or 0, top_logprobs=top)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float, what: str, log: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}"
                               + (f": {log.read_text()[-3000:]}" if log is not None else ""))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


@dataclass
class MPServer:
    """A running `lmcache server` (LMCache's multiprocess mode) on loopback."""
    port: int
    proc: subprocess.Popen
    log: Any  # pathlib.Path of its combined output

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def lmcache_server(log_path: Any, *, chunk_size: int = 256, l1_size_gb: float = 1, shm_name: Optional[str] = None,
                   port: Optional[int] = None, env: Optional[dict[str, str]] = None,
                   timeout_s: float = 120) -> Iterator[MPServer]:
    """`lmcache server` with an LRU L1 of l1_size_gb accepting both transfer modes, for the block;
    shm_name: the engine-driven shared-memory path's segment. Its output goes to log_path."""
    from pathlib import Path

    exe = shutil.which("lmcache")
    if exe is None:
        raise RuntimeError("the `lmcache` command is not installed: pip install lmcache")
    port = port or free_port()
    http_port, metrics_port = free_port(), free_port()
    cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--http-host", "127.0.0.1",
           "--http-port", str(http_port), "--prometheus-port", str(metrics_port), "--chunk-size", str(chunk_size),
           "--l1-size-gb", str(l1_size_gb), "--eviction-policy", "LRU", "--supported-transfer-mode", "auto"]
    if shm_name:
        cmd += ["--shm-name", shm_name]
    log = Path(log_path)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = MPServer(port=port, proc=proc, log=log)
    try:
        _wait_for_port(http_port, proc, timeout_s, "lmcache server", log)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def local_redis() -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server on a free loopback port for the duration of the block: (url, process)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
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
