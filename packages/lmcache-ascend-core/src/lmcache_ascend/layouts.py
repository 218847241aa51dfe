"""Layout descriptors derived from tensors' own shapes and strides.

Every engine layout is named by its axes, so adding a layout is one line:
  P = K/V plane, B = block, T = token in block, H = kv head, D = head dim (must be contiguous),
  PD = one axis of 2*head_size holding K then V (vLLM CPU platform).
LMCache-side formats use P = K/V plane (size 2; 1 for MLA), L = layer, T = token,
X = hidden = heads * head_size (contiguous).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from lmcache_ascend._tensors import TensorView, as_view

# name -> (axes of one per-layer tensor, tensors per layer). Planes moved: 2 when there is a
# P axis or a (K, V) pair per layer, else 1 (MLA latent, or K/V packed per head and moved as one).
ENGINE_LAYOUTS: dict[str, tuple[tuple[str, ...], int]] = {
    "flash_attn": (("P", "B", "T", "H", "D"), 1),       # [2, NB, BS, NH, HS] vLLM flash-attn
    "flashinfer": (("B", "P", "T", "H", "D"), 1),       # [NB, 2, BS, NH, HS]
    "separate_kv": (("B", "T", "H", "D"), 2),           # (K, V), [NB, BS, NH, HS] each
    "cpu": (("B", "H", "T", "PD"), 1),                  # [NB, NH, BS, 2*HS] vLLM CPU platform
    "cpu_nhd": (("B", "T", "H", "PD"), 1),              # [NB, BS, NH, 2*HS] its token-major variant
    "hnd": (("P", "B", "H", "T", "D"), 1),              # [2, NB, NH, BS, HS]
    "flashinfer_hnd": (("B", "P", "H", "T", "D"), 1),   # [NB, 2, NH, BS, HS]
    "separate_kv_hnd": (("B", "H", "T", "D"), 2),       # (K, V), [NB, NH, BS, HS] each
    "packed_hnd": (("B", "H", "T", "D"), 1),            # [NB, NH, BS, 2*HS] moved as one plane
    "packed_nhd": (("B", "T", "H", "D"), 1),            # [NB, BS, NH, 2*HS] moved as one plane
    "mla": (("B", "T", "D"), 1),                        # [NB, BS, D_latent]
}

CHUNK_FORMATS: dict[str, tuple[str, ...]] = {
    "KV_2LTD": ("P", "L", "T", "X"),  # [2, L, T, D]
    "KV_T2D": ("T", "P", "X"),        # [T, 2, D], one layer
    "KV_2TD": ("P", "T", "X"),        # [2, T, D], one layer
    "KV_MLA_FMT": ("P", "L", "T", "X"),  # [1, L, T, D]
    "MLA_TD": ("T", "X"),                # [T, D], one layer (single-layer and layerwise MLA)
}


@dataclass(frozen=True)
class PagedKV:
    """The paged side of a transfer: mirrors native PageLayout."""

    plane_bases: tuple[int, ...]   # layer-major, then plane
    num_layers: int
    num_planes: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int
    block_stride: int
    head_stride: int
    token_stride: int
    extent_elems: int              # elements addressable from every plane base
    itemsize: int
    dtype: str
    device: str

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_size

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


def _layout_error(arg: str, layout: str, view: TensorView, why: str) -> ValueError:
    axes = " x ".join(ENGINE_LAYOUTS[layout][0])
    return ValueError(f"{arg}: cannot describe a tensor with {view.describe()} as layout '{layout}' "
                      f"({axes}): {why}")


def _axis_strides(view: TensorView, layout: str, arg: str) -> dict[str, tuple[int, int]]:
    """{axis: (size, element stride)} of one per-layer tensor in `layout`."""
    axes = ENGINE_LAYOUTS[layout][0]
    if view.ndim != len(axes):
        raise _layout_error(arg, layout, view, f"expected {len(axes)} dimensions, got {view.ndim}")
    out: dict[str, tuple[int, int]] = {}
    for axis, size, stride in zip(axes, view.shape, view.strides):
        if axis == "PD":
            if size % 2:
                raise _layout_error(arg, layout, view, f"last dimension {size} is not 2 * head_size")
            out["P"] = (2, (size // 2) * stride)
            out["D"] = (size // 2, stride)
        else:
            out[axis] = (size, stride)
    if out["D"][1] != 1 and out["D"][0] != 1:
        raise _layout_error(arg, layout, view, "head_dim must be contiguous (stride 1); pass .contiguous()")
    if "P" in out and out["P"][0] != 2:
        raise _layout_error(arg, layout, view, f"the K/V axis has size {out['P'][0]}, expected 2")
    return out


def describe_paged(kv_caches: Sequence[Any], layout: str, arg: str = "kv_caches") -> PagedKV:
    """Descriptor of a paged KV cache given one entry per layer.

    An entry is one tensor, or a (K, V) pair for the separate_kv layouts.
    """
    if layout not in ENGINE_LAYOUTS:
        raise ValueError(f"{arg}: unknown engine layout '{layout}'; known: {sorted(ENGINE_LAYOUTS)}")
    if len(kv_caches) == 0:
        raise ValueError(f"{arg}: no layers given; pass one KV-cache tensor (or K/V pair) per layer")
    separate = ENGINE_LAYOUTS[layout][1] == 2
    bases: list[int] = []
    first: dict[str, tuple[int, int]] | None = None
    ref: TensorView | None = None
    extent: int | None = None
    for layer, entry in enumerate(kv_caches):
        tensors = list(entry) if separate else [entry]
        if separate and len(tensors) != 2:
            raise ValueError(f"{arg}[{layer}]: layout '{layout}' takes a (K, V) pair per layer, got {len(tensors)} tensors")
        for plane, t in enumerate(tensors):
            name = f"{arg}[{layer}]" + (f"[{plane}]" if separate else "")
            view = as_view(t, name, writable=True)
            axes = _axis_strides(view, layout, name)
            if ref is None:
                ref, first = view, axes
            elif axes != first or view.dtype != ref.dtype or view.device != ref.device:
                raise ValueError(f"{name}: every layer must have the same shape, strides, dtype and device; "
                                 f"got {view.describe()} but {arg}[0] has {ref.describe()}")
            planes = [0, 1] if "P" in axes else [0]
            for p in planes:
                base = view.address + p * axes["P"][1] * view.itemsize if "P" in axes else view.address
                bases.append(base)
                e = view.extent_from(base)
                extent = e if extent is None else min(extent, e)
    assert first is not None and ref is not None and extent is not None
    num_planes = 2 if ("P" in first or separate) else 1
    return PagedKV(
        plane_bases=tuple(bases), num_layers=len(kv_caches), num_planes=num_planes,
        num_blocks=first["B"][0], block_size=first["T"][0],
        num_heads=first["H"][0] if "H" in first else 1, head_size=first["D"][0],
        block_stride=first["B"][1], head_stride=first["H"][1] if "H" in first else first["D"][0],
        token_stride=first["T"][1], extent_elems=extent, itemsize=ref.itemsize, dtype=ref.dtype,
        device=ref.device,
    )


@dataclass(frozen=True)
class ChunkView:
    """One LMCache memory object: its view, format and element strides."""

    view: TensorView
    num_planes: int
    num_layers: int
    num_tokens: int
    hidden: int
    plane_stride: int
    layer_stride: int
    token_stride: int

    def layer(self, index: int, arg: str = "layer_idx") -> "ChunkView":
        """This memory object restricted to one layer (for the per-layer ops)."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"{arg}={index} is out of range for a memory object of {self.num_layers} layers")
        start = self.view.address + index * self.layer_stride * self.view.itemsize
        return replace(self, view=replace(self.view, address=start), num_layers=1)


def describe_chunk(obj: Any, fmt: str, arg: str = "memory object", *, writable: bool = False) -> ChunkView:
    if fmt not in CHUNK_FORMATS:
        raise ValueError(f"{arg}: unknown LMCache format '{fmt}'; known: {sorted(CHUNK_FORMATS)}")
    view = as_view(obj, arg, writable=writable)
    axes = CHUNK_FORMATS[fmt]
    if view.ndim != len(axes):
        raise ValueError(f"{arg}: format {fmt} is [{', '.join(axes)}] ({len(axes)} dimensions) "
                         f"but got {view.describe()}")
    dims = {a: (n, s) for a, n, s in zip(axes, view.shape, view.strides)}
    if dims["X"][1] != 1 and dims["X"][0] != 1:
        raise ValueError(f"{arg}: the hidden dimension must be contiguous; got {view.describe()}")
    planes, plane_stride = dims.get("P", (1, 0))
    expected_planes = 1 if fmt in ("KV_MLA_FMT", "MLA_TD") else 2
    if planes != expected_planes:
        raise ValueError(f"{arg}: format {fmt} has {expected_planes} K/V plane(s) but got {view.describe()}")
    layers, layer_stride = dims.get("L", (1, 0))
    return ChunkView(view, planes, layers, dims["T"][0], dims["X"][0], plane_stride, layer_stride, dims["T"][1])
