import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("scenario.py")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    from lmcache_ascend.integration.vllm import demo_model as dm

    return str(dm.build(tmp_path_factory.mktemp("model")))


def free_port() -> int:
    from lmcache_ascend.integration.vllm.serving import free_port as serving_free_port

    return serving_free_port()


@pytest.fixture
def redis_url():
    """A real redis-server on loopback, started for the test and stopped after it."""
    from lmcache_ascend.integration.vllm.serving import local_redis

    with local_redis() as (url, proc):
        yield url, proc


def assert_same_greedy(*answers) -> None:
    """Each answer is the first one's computation, up to bf16 rounding (serving.greedy_difference)."""
    from lmcache_ascend.integration.vllm.serving import greedy_difference

    for i, other in enumerate(answers[1:], 1):
        difference = greedy_difference(answers[0], other)
        assert difference is None, f"answer {i} vs answer 0: {difference}"


class EngineRun:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode, self.output = proc.returncode, proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        self.answers = json.loads(lines[-1][len("RESULT "):]) if lines else None


def run_engine(model: str, lmcache, prompts, timeout: int = 600, env=None, mp=None) -> EngineRun:
    """One vLLM engine process (scenario.py) serving `prompts` ([[tokens, seed], ...]) in order;
    mp: LMCache's multiprocess mode ({"port": ..., "transfer_mode": ...}) instead of our connector."""
    spec = json.dumps({"model": model, "lmcache": lmcache, "prompts": prompts, "mp": mp})
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(SCENARIO), spec], capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    return EngineRun(proc)
