"""LMCache's call shapes of the ops surface (multi_layer_kv_transfer & co.): for each EngineKVFormat
number, random paged layers, slots and an empty memory object, and the paged argument as tensors or
raw addresses. Shared by the ops, fallback, bad-input, thread and NPU tests."""
from __future__ import annotations

import torch

from kvref import hidden, make_layer, planes, random_slots

H2D, D2H = 0, 1  # LMCache's TransferDirection values
# EngineKVFormat value -> oracle layout
FORMAT_LAYOUTS = {1: "flash_attn", 2: "flashinfer", 3: "mla", 5: "mla", 6: "hnd", 7: "flashinfer_hnd",
                  10: "packed_hnd", 11: "packed_nhd", 12: "packed_hnd", 13: "packed_nhd", 16: "separate_kv"}
NL, NB, BS, NH, HS, NT = 3, 9, 16, 2, 32, 70


def ops_case(fmt: int, dtype=torch.bfloat16, seed=0):
    layout = FORMAT_LAYOUTS[fmt]
    gen = torch.Generator().manual_seed(seed + fmt)
    layers = [make_layer(layout, NB, BS, NH, HS, dtype, gen) for _ in range(NL)]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    kv = torch.zeros(planes(layout), NL, NT, hidden(layout, NH, HS), dtype=dtype)
    return layout, layers, slots, kv


def paged_arg(fmt: int, layers, mode: str):
    tensors = [t for layer in layers for t in (layer if isinstance(layer, tuple) else (layer,))]
    if fmt == 5:  # SGLang MLA: [NB*BS, 1, D] per layer
        tensors = [t.view(NB * BS, 1, -1) for t in tensors]
    if mode == "addresses":
        return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    return tensors
