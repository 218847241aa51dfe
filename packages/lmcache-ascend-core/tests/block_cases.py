"""The engine KV caches the block op (multi_layer_block_kv_transfer) and MP mode's group transfers
are tested on: every EngineKVFormat by name, how to make that cache, its layers as kvref layout views,
the kvref layout and its planes; and the page-buffer shape descriptor LMCache passes with them."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from kvref import random_tensor

NL, NB, BS, NH, HS = 3, 24, 16, 2, 32
CHUNK = 64  # 4 blocks per memory object
N_BLOCKS = 11  # 3 memory objects, the last one partly filled


# format name -> (make the engine's KV cache, its layers as kvref layout views, kvref layout, planes)
def _per_layer(shape, layout, planes=2):
    return (lambda d, g: [random_tensor(shape, d, g) for _ in range(NL)], lambda kv: kv, layout, planes)


FORMATS = {
    "NB_NL_TWO_BS_NH_HS": (lambda d, g: random_tensor((NB, NL, 2, BS, NH, HS), d, g),
                           lambda kv: [kv[:, layer] for layer in range(NL)], "flashinfer", 2),
    "NB_NL_TWO_NH_BS_HS": (lambda d, g: random_tensor((NB, NL, 2, NH, BS, HS), d, g),
                           lambda kv: [kv[:, layer] for layer in range(NL)], "flashinfer_hnd", 2),
    "NL_X_TWO_NB_BS_NH_HS": _per_layer((2, NB, BS, NH, HS), "flash_attn"),
    "NL_X_NB_TWO_BS_NH_HS": _per_layer((NB, 2, BS, NH, HS), "flashinfer"),
    "NL_X_NB_BS_HS": _per_layer((NB, BS, HS), "mla", 1),
    "NL_X_NB_BSV_BSS": _per_layer((NB, BS, HS), "mla", 1),
    "NL_X_NBBS_ONE_HS": (lambda d, g: [random_tensor((NB * BS, 1, HS), d, g) for _ in range(NL)],
                         lambda kv: [t.view(NB, BS, HS) for t in kv], "mla", 1),
    "NL_X_TWO_NB_NH_BS_HS": _per_layer((2, NB, NH, BS, HS), "hnd"),
    "NL_X_NB_TWO_NH_BS_HS": _per_layer((NB, 2, NH, BS, HS), "flashinfer_hnd"),
    "NL_X_TWO_NB_NH_ONE_BS_HS": (lambda d, g: [random_tensor((2, NB, NH, 1, BS, HS), d, g) for _ in range(NL)],
                                 lambda kv: [t.squeeze(3) for t in kv], "hnd", 2),
    "NL_X_NB_TWO_NH_ONE_BS_HS": (lambda d, g: [random_tensor((NB, 2, NH, 1, BS, HS), d, g) for _ in range(NL)],
                                 lambda kv: [t.squeeze(3) for t in kv], "flashinfer_hnd", 2),
    # K|V packed per head: shape_desc.hs is the packed content width
    "NL_X_NB_NH_BS_CS": _per_layer((NB, NH, BS, HS), "packed_hnd", 1),
    "NL_X_NB_BS_NH_CS": _per_layer((NB, BS, NH, HS), "packed_nhd", 1),
    "NL_X_NB_NH_BS_TWO_HS": _per_layer((NB, NH, BS, HS), "packed_hnd", 1),
    "NL_X_NB_BS_NH_TWO_HS": _per_layer((NB, BS, NH, HS), "packed_nhd", 1),
    "NL_X_NB_BS_NH_HS": _per_layer((NB, BS, NH, HS), "packed_nhd", 1),
    "NL_X_TWO_X_NB_BS_NH_HS": (lambda d, g: [(random_tensor((NB, BS, NH, HS), d, g), random_tensor((NB, BS, NH, HS), d, g))
                                             for _ in range(NL)], lambda kv: kv, "separate_kv", 2),
    "TWO_X_NL_X_NB_BS_NH_HS": (lambda d, g: [[random_tensor((NB, BS, NH, HS), d, g) for _ in range(NL)] for _ in "KV"],
                               lambda kv: list(zip(*kv)), "separate_kv", 2),
    "TWO_X_NL_X_NBBS_NH_HS": (lambda d, g: [[random_tensor((NB * BS, NH, HS), d, g) for _ in range(NL)] for _ in "KV"],
                              lambda kv: [tuple(t.view(NB, BS, NH, HS) for t in pair) for pair in zip(*kv)],
                              "separate_kv", 2),
}


def shape_desc(dtype, hidden_heads=NH):
    return SimpleNamespace(kv_size=2, nl=NL, nb=NB, bs=BS, nh=hidden_heads, hs=HS,
                           element_size=torch.empty((), dtype=dtype).element_size(), block_stride_elems=0, dtype=dtype)


def tensors_of(kv):
    if isinstance(kv, torch.Tensor):
        return [kv]
    return [t for entry in kv for t in (tensors_of(entry) if isinstance(entry, (list, tuple)) else [entry])]
