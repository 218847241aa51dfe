"""Reference model of every engine layout in plain torch indexing: the oracle of the tests.

canonical form of one layer = [planes, num_blocks * block_size, heads * head_size], so slot s is
row s. to_canonical / from_canonical convert a layer between its layout and that form.
"""
from __future__ import annotations

import torch

LAYOUTS = ["flash_attn", "flashinfer", "separate_kv", "cpu", "cpu_nhd", "hnd", "flashinfer_hnd", "separate_kv_hnd",
           "packed_hnd", "packed_nhd", "mla"]
# Layers made of several planes of different widths, whose columns follow each other in the memory
# object's hidden dimension: layout -> planes per layer.
GROUP_LAYOUTS = {"mla_rope": 2, "dsa": 3, "mla_planes": None}
# Plane widths of each plane-group layout: kv_lora_rank, qk_rope_head_dim, index_head_dim (DeepSeek
# sizes scaled down).
PLANE_WIDTHS = {"mla_rope": (64, 16), "dsa": (64, 16, 32), "mla_planes": (64, 16, 32)}
# Ascend 310P NZ caches: a K/V pair (or a merged [2, ...] tensor) of [NB, hidden/C0, BS, C0], C0 = 32 bytes.
NZ_LAYOUTS = ["nz", "nz_merged"]
# The HND layout each NZ layout is, with head_size = one fractal.
_NZ_AS = {"nz": "separate_kv_hnd", "nz_merged": "hnd"}


def nz_fractal(dtype: torch.dtype) -> int:
    """Elements per NZ fractal column: 32 bytes."""
    return 32 // torch.empty((), dtype=dtype).element_size()


def make_planes(nb: int, bs: int, widths, dtype: torch.dtype, gen: torch.Generator, head_axis: bool = True):
    """One layer of a plane-group layout: [NB, BS, 1, W] (or [NB, BS, W]) per width."""
    return tuple(random_tensor((nb, bs, 1, w) if head_axis else (nb, bs, w), dtype, gen) for w in widths)


def make_layer(layout: str, nb: int, bs: int, nh: int, hs: int, dtype: torch.dtype, gen: torch.Generator):
    shapes = {
        "flash_attn": [(2, nb, bs, nh, hs)],
        "flashinfer": [(nb, 2, bs, nh, hs)],
        "separate_kv": [(nb, bs, nh, hs)] * 2,
        "cpu": [(nb, nh, bs, 2 * hs)],
        "cpu_nhd": [(nb, bs, nh, 2 * hs)],
        "hnd": [(2, nb, nh, bs, hs)],
        "flashinfer_hnd": [(nb, 2, nh, bs, hs)],
        "packed_hnd": [(nb, nh, bs, 2 * hs)],
        "packed_nhd": [(nb, bs, nh, 2 * hs)],
        "separate_kv_hnd": [(nb, nh, bs, hs)] * 2,
        "mla": [(nb, bs, nh * hs)],
        "nz": [(nb, nh * hs // nz_fractal(dtype), bs, nz_fractal(dtype))] * 2,
        "nz_merged": [(2, nb, nh * hs // nz_fractal(dtype), bs, nz_fractal(dtype))],
    }[layout]
    tensors = [random_tensor(s, dtype, gen) for s in shapes]
    return tuple(tensors) if layout.startswith("separate") or layout == "nz" else tensors[0]


def random_tensor(shape, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    return torch.randint(-128, 127, shape, generator=gen, dtype=torch.int64).to(dtype)


def random_slots(num_tokens: int, num_slots: int, gen: torch.Generator, dtype, hole_every: int = 5,
                 block_size: int = 16):
    """Distinct slots laid out as vLLM hands them out (blocks in random order, tokens consecutive
    inside a block), a few swapped to break runs, and every `hole_every`-th token set to -1."""
    blocks = torch.randperm((num_slots + block_size - 1) // block_size, generator=gen)
    slots = (blocks[:, None] * block_size + torch.arange(block_size)).flatten()
    slots = slots[slots < num_slots][:num_tokens]
    for _ in range(num_tokens // 8):
        i, j = torch.randint(0, num_tokens, (2,), generator=gen).tolist()
        slots[[i, j]] = slots[[j, i]]
    slots = slots.to(dtype)
    slots[::hole_every] = -1
    return slots


def planes(layout: str) -> int:
    return 1 if layout in ("mla", "packed_hnd", "packed_nhd", *GROUP_LAYOUTS) else 2


def hidden(layout: str, nh: int, hs: int) -> int:
    """Elements per token and plane in the LMCache memory object."""
    return 2 * nh * hs if layout.startswith("packed") else nh * hs


def to_canonical(layout: str, layer) -> torch.Tensor:
    if layout in _NZ_AS:
        return to_canonical(_NZ_AS[layout], layer)
    if layout in GROUP_LAYOUTS:  # each plane's columns, one after the other
        return torch.cat([t.reshape(t.shape[0] * t.shape[1], t.shape[-1]) for t in layer], dim=1)[None].clone()
    if layout == "flash_attn":
        p, nb, bs, nh, hs = layer.shape
        return layer.reshape(p, nb * bs, nh * hs).clone()
    if layout == "flashinfer":
        return layer.transpose(0, 1).reshape(2, -1, layer.shape[-2] * layer.shape[-1]).clone()
    if layout == "separate_kv":
        return torch.stack([t.reshape(-1, t.shape[-2] * t.shape[-1]) for t in layer])
    if layout == "cpu":
        nb, nh, bs, hs2 = layer.shape
        return layer.view(nb, nh, bs, 2, hs2 // 2).permute(3, 0, 2, 1, 4).reshape(2, nb * bs, nh * hs2 // 2)
    if layout == "cpu_nhd":
        nb, bs, nh, hs2 = layer.shape
        return layer.view(nb, bs, nh, 2, hs2 // 2).permute(3, 0, 1, 2, 4).reshape(2, nb * bs, nh * hs2 // 2)
    if layout == "hnd":
        p, nb, nh, bs, hs = layer.shape
        return layer.permute(0, 1, 3, 2, 4).reshape(p, nb * bs, nh * hs)
    if layout == "flashinfer_hnd":
        nb, p, nh, bs, hs = layer.shape
        return layer.permute(1, 0, 3, 2, 4).reshape(p, nb * bs, nh * hs)
    if layout == "separate_kv_hnd":
        return torch.stack([t.permute(0, 2, 1, 3).reshape(-1, t.shape[1] * t.shape[3]) for t in layer])
    if layout == "packed_hnd":
        nb, nh, bs, cs = layer.shape
        return layer.permute(0, 2, 1, 3).reshape(1, nb * bs, nh * cs)
    if layout == "packed_nhd":
        nb, bs, nh, cs = layer.shape
        return layer.reshape(1, nb * bs, nh * cs).clone()
    if layout == "mla":
        nb, bs, d = layer.shape
        return layer.reshape(1, nb * bs, d).clone()
    raise AssertionError(layout)


def from_canonical(layout: str, canon: torch.Tensor, like):
    """Inverse of to_canonical, shaped like `like`."""
    if layout in _NZ_AS:
        return from_canonical(_NZ_AS[layout], canon, like)
    if layout in GROUP_LAYOUTS:
        widths = [t.shape[-1] for t in like]
        return tuple(part.reshape(t.shape) for part, t in zip(canon[0].split(widths, dim=1), like))
    if layout == "flash_attn":
        return canon.reshape(like.shape)
    if layout == "flashinfer":
        nb, p, bs, nh, hs = like.shape
        return canon.reshape(p, nb, bs, nh, hs).transpose(0, 1).contiguous()
    if layout == "separate_kv":
        return tuple(canon[i].reshape(like[i].shape) for i in range(2))
    if layout == "cpu":
        nb, nh, bs, hs2 = like.shape
        return canon.reshape(2, nb, bs, nh, hs2 // 2).permute(1, 3, 2, 0, 4).reshape(like.shape).contiguous()
    if layout == "cpu_nhd":
        nb, bs, nh, hs2 = like.shape
        return canon.reshape(2, nb, bs, nh, hs2 // 2).permute(1, 2, 3, 0, 4).reshape(like.shape).contiguous()
    if layout == "hnd":
        p, nb, nh, bs, hs = like.shape
        return canon.reshape(p, nb, bs, nh, hs).permute(0, 1, 3, 2, 4).contiguous()
    if layout == "flashinfer_hnd":
        nb, p, nh, bs, hs = like.shape
        return canon.reshape(p, nb, bs, nh, hs).permute(1, 0, 3, 2, 4).contiguous()
    if layout == "packed_hnd":
        nb, nh, bs, cs = like.shape
        return canon.reshape(nb, bs, nh, cs).permute(0, 2, 1, 3).contiguous()
    if layout == "packed_nhd":
        return canon.reshape(like.shape)
    if layout == "separate_kv_hnd":
        nb, nh, bs, hs = like[0].shape
        return tuple(canon[i].reshape(nb, bs, nh, hs).permute(0, 2, 1, 3).contiguous() for i in range(2))
    if layout == "mla":
        return canon.reshape(like.shape)
    raise AssertionError(layout)


def ref_gather(layout: str, layers, slots: torch.Tensor, out: torch.Tensor, skip: int = 0) -> torch.Tensor:
    """Expected [P, L, T, D] memory object after gathering `layers` into a copy of `out`."""
    out = out.clone()
    keep = torch.zeros(slots.numel(), dtype=torch.bool)
    keep[skip:] = slots[skip:] >= 0
    idx = slots[keep].long()
    for l, layer in enumerate(layers):
        out[:, l, keep] = to_canonical(layout, layer)[:, idx]
    return out


def ref_scatter(layout: str, chunk: torch.Tensor, slots: torch.Tensor, layers, skip: int = 0):
    """Expected paged layers after scattering `chunk` ([P, L, T, D]) into copies of `layers`."""
    keep = torch.zeros(slots.numel(), dtype=torch.bool)
    keep[skip:] = slots[skip:] >= 0
    idx = slots[keep].long()
    result = []
    for l, layer in enumerate(layers):
        canon = to_canonical(layout, layer)
        canon[:, idx] = chunk[:, l, keep]
        result.append(from_canonical(layout, canon, layer))
    return result


def same(a, b) -> bool:
    """Bit-exact equality (so -0.0 != 0.0), for tensors or tuples of tensors."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
