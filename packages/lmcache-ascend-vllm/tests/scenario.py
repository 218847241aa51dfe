"""One vLLM engine process for the end-to-end tests: reads a JSON scenario from argv[1], sends its
prompts in order, prints one line `RESULT {json}` with what each request got, and exits.

Scenario keys: model, lmcache (LMCache settings, or null for no connector), mp (LMCache's
multiprocess mode instead: {"port": ..., "transfer_mode": ...}), prompts (list of [num_tokens,
seed], or "pause": print PAUSED and wait for a line on stdin, so a test can act mid-run), max_tokens.
"""
import dataclasses
import json
import sys


def main() -> int:
    spec = json.loads(sys.argv[1])
    from lmcache_ascend.integration.vllm import demo_model, serving

    llm = serving.start_llm(spec["model"], spec.get("lmcache"), mp=spec.get("mp"))
    answers = []
    for entry in spec["prompts"]:
        if entry == "pause":
            print("PAUSED", flush=True)
            sys.stdin.readline()
            continue
        tokens, seed = entry
        a = serving.ask(llm, demo_model.prompt(tokens, seed=seed), max_tokens=spec.get("max_tokens", 16))
        answers.append(dataclasses.asdict(a))
    print("RESULT " + json.dumps(answers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
