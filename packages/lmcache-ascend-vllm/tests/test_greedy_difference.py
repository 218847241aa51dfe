"""serving.greedy_difference: the rule every end-to-end test, the demo and the benchmarks use to say
two greedy outputs are the same computation. Cases are the ones measured on the demo model."""
from lmcache_ascend.integration.vllm.serving import greedy_difference


def answer(steps):
    """steps: [(token, [[token, logprob], [token, logprob]]), ...] -> an answer as scenario.py prints it."""
    return {"token_ids": [t for t, _ in steps], "top_logprobs": [tops for _, tops in steps]}


COMMON = [(1525, [[1525, -1.348], [283, -1.598]]), (1546, [[1546, -0.862], [1000, -1.237]])]


def test_equal_outputs_within_rounding_agree():
    warm = answer([(1525, [[1525, -1.351], [283, -1.601]]), (1546, [[1546, -0.863], [1000, -1.238]])])
    assert greedy_difference(answer(COMMON), warm) is None
    assert greedy_difference(answer(COMMON), answer(COMMON)) is None


def test_parting_at_an_exact_tie_agrees():
    # cold: 1000 and 1546 tied at -1.057; warm took 1546 with 1000 one bf16 step below
    cold = answer(COMMON + [(1000, [[1000, -1.057], [1546, -1.057]]), (1862, [[1862, -0.74], [1924, -0.74]])])
    warm = answer(COMMON + [(1546, [[1546, -0.977], [1000, -1.102]]), (1798, [[1798, -1.31], [1546, -1.81]])])
    assert greedy_difference(cold, warm) is None and greedy_difference(warm, cold) is None


def test_parting_at_a_tie_in_one_run_only_agrees_when_the_other_gives_that_token_the_same_logprob():
    cold = answer([(149, [[149, -1.656], [1656, -1.656]])])
    warm = answer([(1656, [[1656, -1.630], [229, -1.880]])])  # 149 is below warm's top two
    assert greedy_difference(cold, warm) is None
    far = answer([(1656, [[1656, -0.9], [229, -1.880]])])  # the same token, 0.76 nat likelier: not a tie
    assert "step 0: token 149 vs 1656" in greedy_difference(cold, far)


def test_parting_without_a_tie_is_a_difference():
    other = answer(COMMON[:1] + [(1000, [[1000, -0.3], [1546, -2.0]])])
    assert greedy_difference(answer(COMMON), other).startswith("step 1: token 1546 vs 1000")


def test_same_tokens_with_moved_logprobs_are_a_difference():
    moved = answer([(1525, [[1525, -0.5], [283, -2.5]]), COMMON[1]])
    assert greedy_difference(answer(COMMON), moved) == "step 0: token 1525 has logprob -1.348 vs -0.500"


def test_different_lengths_are_a_difference():
    assert greedy_difference(answer(COMMON), answer(COMMON[:1])) == "2 tokens vs 1"
