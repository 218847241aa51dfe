"""A small Llama built on this machine: random weights and a word-level tokenizer made locally.

Nothing is fetched from a model hub, so the demo, the end-to-end tests and the benchmarks run
offline. The model is small (8 layers, hidden 512, 4 KV heads of 64: ~35 M parameters) so vLLM's
CPU backend serves it in seconds, yet large enough that prefill compute, not fixed per-request
overhead, dominates time to first token, as with real models; its KV cache goes through exactly the
path a real model's does.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS_SEED = 1234
LOGIT_SCALE = 16.0
VOCAB_WORDS = 2000


def _words() -> list[str]:
    rng = random.Random(WORDS_SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < VOCAB_WORDS:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 8))))
    return sorted(words)


def prompt(num_tokens: int, seed: int = 0) -> str:
    """A prompt of exactly `num_tokens` tokens for the demo tokenizer (one word = one token)."""
    rng = random.Random(seed)
    words = _words()
    return " ".join(rng.choice(words) for _ in range(num_tokens))


def build(path: str | Path, *, layers: int = 8, max_len: int = 8192) -> Path:
    """Write the model directory (config, safetensors weights, tokenizer) if it is not there."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    marker = path / "lmcache_ascend_demo.json"
    spec = {"layers": layers, "max_len": max_len, "vocab_words": VOCAB_WORDS, "seed": WORDS_SEED, "hidden": 512,
            "logit_scale": LOGIT_SCALE}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return path
    path.mkdir(parents=True, exist_ok=True)

    # Word-level tokenizer over a fixed word list: token counts of demo prompts are exact.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in _words():
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=max_len)
    fast.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=512, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=max_len,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Random weights give nearly tied logits, so greedy decoding would flip on rounding noise (bf16
    # attention split differently between a cold and a warm prefill). Sharper output weights make
    # the argmax a property of the model, so "identical outputs" checks the cache, not luck.
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    model = model.to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    marker.write_text(json.dumps(spec))
    return path
