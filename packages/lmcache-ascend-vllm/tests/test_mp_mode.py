"""LMCache's multiprocess mode end to end on vLLM's CPU platform: a real `lmcache server` and real
vLLM engines with upstream's LMCacheMPConnector, our kernels bound in both processes through our
LMCache device plugin (no setting, no import order), in each transfer mode."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCENARIO, EngineRun, assert_same_greedy, run_engine

pytest.importorskip("lmcache.v1.multiprocess", reason="needs LMCache >= 0.5")
from lmcache_ascend.integration.vllm.serving import free_port, lmcache_server  # noqa: E402

# One worker runs these in order under pytest-xdist: the /dev/shm checks see every MP engine's segments.
pytestmark = pytest.mark.xdist_group("mp_mode")

BOUND = "LMCache's cpu device ops run lmcache_ascend.ops"
PROMPT = [1100, 21]
FULL_CHUNKS = 1024  # 1100 tokens, chunks of 256


def kv_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("lmcache_kv_*")}


def check_warm(run: EngineRun, cold_index: int = 0, warm_index: int = 1) -> None:
    assert run.returncode == 0 and run.answers is not None, run.output[-4000:]
    cold, warm = run.answers[cold_index], run.answers[warm_index]
    assert cold["cached_tokens"] == 0
    assert warm["cached_tokens"] == FULL_CHUNKS  # every full chunk came from the server
    assert_same_greedy(cold, warm)


def check_kernels(server_log: str, engine_output: str, transfer_mode) -> None:
    assert BOUND in server_log and BOUND in engine_output
    # engine-driven: the worker moves KV; lmcache-driven: the server, over the worker's shared KV cache
    mover = server_log if transfer_mode == "lmcache_driven" else engine_output
    for direction in ("store", "retrieve"):
        assert f"multi_layer_block_kv_transfer runs natively (NL_X_NB_NH_BS_CS, {direction})" in mover


# Engine-driven over sockets is the default mode: test_two_engines_share_chunks_through_one_server.
@pytest.mark.parametrize("transfer_mode, shm", [(None, True), ("lmcache_driven", False)],
                         ids=["engine-driven-shm", "lmcache-driven"])
def test_warm_hits_in_each_transfer_mode_run_our_kernels(demo_model, tmp_path, transfer_mode, shm):
    before = kv_segments()
    shm_name = f"lmca_test_{os.getpid()}" if shm else None
    with lmcache_server(tmp_path / "server.log", shm_name=shm_name) as server:
        run = run_engine(demo_model, None, [PROMPT, PROMPT], mp={"port": server.port, "transfer_mode": transfer_mode})
        check_warm(run)
        server_log = server.output()
    check_kernels(server_log, run.output, transfer_mode)
    assert kv_segments() <= before, "the worker's KV segment was left in /dev/shm"


def test_two_engines_share_chunks_through_one_server(demo_model, tmp_path):
    before = kv_segments()
    with lmcache_server(tmp_path / "server.log") as server:
        first = run_engine(demo_model, None, [PROMPT, PROMPT], mp={"port": server.port})
        second = run_engine(demo_model, None, [PROMPT], mp={"port": server.port})
        server_log = server.output()
    check_warm(first)
    check_kernels(server_log, first.output, None)
    assert second.returncode == 0 and second.answers is not None, second.output[-4000:]
    assert second.answers[0]["cached_tokens"] == FULL_CHUNKS  # a new process, served by the server
    assert_same_greedy(first.answers[0], second.answers[0])
    assert kv_segments() <= before, "a worker's KV segment was left in /dev/shm"


def read_until_paused(engine: subprocess.Popen, output: list[str]) -> None:
    for line in engine.stdout:
        output.append(line)
        if line.startswith("PAUSED"):
            return
    engine.wait(timeout=60)
    pytest.fail(f"the engine exited ({engine.returncode}) before its pause:\n" + "".join(output)[-6000:])


def test_server_restarted_mid_run_vllm_keeps_serving(demo_model, tmp_path):
    port = free_port()
    spec = json.dumps({"model": demo_model, "lmcache": None, "mp": {"port": port},
                       "prompts": [PROMPT, PROMPT, "pause", PROMPT, "pause", PROMPT, PROMPT]})
    output: list[str] = []
    engine = None
    try:
        with lmcache_server(tmp_path / "first.log", port=port) as server:
            engine = subprocess.Popen([sys.executable, str(SCENARIO), spec], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, start_new_session=True)
            read_until_paused(engine, output)  # two requests served
            server.proc.terminate()
            server.proc.wait(timeout=60)
        engine.stdin.write("\n")  # served with the server gone: recomputed
        engine.stdin.flush()
        read_until_paused(engine, output)
        with lmcache_server(tmp_path / "second.log", port=port):
            engine.stdin.write("\n")  # a new, empty server on the same port
            engine.stdin.flush()
            rest, _ = engine.communicate(timeout=600)
    finally:
        if engine is not None and engine.poll() is None:  # a failure above: no engine left behind
            os.killpg(engine.pid, signal.SIGKILL)
            engine.communicate()
    output.append(rest)
    text = "".join(output)
    assert engine.returncode == 0, text[-4000:]
    answers = json.loads(next(x for x in text.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    cold, warm, no_server, fresh, again = answers
    assert warm["cached_tokens"] == FULL_CHUNKS
    assert no_server["cached_tokens"] == 0 and fresh["cached_tokens"] == 0  # recomputed, not lost
    assert_same_greedy(*answers)
    # Whether LMCache 0.5.6's MP connector stores into a server restarted under it depends on when
    # it reconnects: measured here both ways (a miss in earlier runs, a hit of every full chunk on
    # 2026-12-02). Either is served correctly; a partial hit would mean chunks were lost.
    assert again["cached_tokens"] in (0, FULL_CHUNKS)
