"""CacheGen's codec and CacheBlend's K rotation with LMCache 0.5.6's device-op signatures.

The bitstream is LMCache's own (its CUDA kernels' and its torch/numba baseline's): chunks encoded
here decode anywhere LMCache runs and the other way round. Every argument is checked (shape, dtype,
device, sizes) before anything is written; the native kernels bounds-check every access again.

Where each op runs, by the tensors' device:
- cpu: the native kernels (native/cpu/cachegen_codec.cpp) on the shared thread pool.
- npu: `calculate_cdf` and the rotations run as torch ops on the NPU (torch_npu): both are a few
  elementwise / scatter-add / cumsum steps that torch_npu already runs on the device, so the data
  stays there. `encode_fast_new`, `decode_fast_new` and `decode_fast_prefsum` copy their inputs to
  the host, run the native kernels, and copy the results back: arithmetic coding is a serial,
  branchy loop per (layer, channel) with data-dependent bit output, which no torch_npu op
  expresses, and LMCache's own baseline also runs it on the host.
"""
from __future__ import annotations

from typing import Any

from lmcache_ascend._native import codec as _native
from lmcache_ascend._tensors import as_view, dtype_name

_CDF_DTYPES = ("int16", "uint16")  # LMCache's CDFs are int16 holding unsigned 16-bit fractions
_SYMBOL_DTYPES = ("uint8", "int8")


def _dtype(t) -> str:
    return dtype_name(t.dtype)


def _device_of(t) -> str:  # one place that reads the device (the NPU stand-in tests replace it)
    return t.device.type


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check(t, name: str, ndim: int | None = None, dtypes: tuple[str, ...] | None = None) -> None:
    if not hasattr(t, "dtype") or not hasattr(t, "data_ptr"):
        raise TypeError(f"{name}: expected a torch tensor, got {type(t).__name__}")
    _require(ndim is None or t.dim() == ndim,
             f"{name}: has shape {list(t.shape)}, expected {ndim} dimensions; see LMCache's CacheGen layout "
             "(symbols [layers, tokens, channels], cdf [layers, channels, entries])")
    _require(dtypes is None or _dtype(t) in dtypes,
             f"{name}: dtype {_dtype(t)} is not supported; pass it as one of {', '.join(dtypes or ())} "
             f"(e.g. {name}.to(torch.{(dtypes or ('',))[0]}))")


def _same_device(**tensors) -> str:
    devices = {name: _device_of(t) for name, t in tensors.items()}
    kinds = sorted(set(devices.values()))
    _require(len(kinds) == 1, f"tensors on different devices ({devices}); move them to one device")
    _require(kinds[0] in ("cpu", "npu"),
             f"tensors are on {kinds[0]}: lmcache_ascend serves the cpu and Ascend npu devices "
             "(LMCache's own CUDA ops serve cuda)")
    return kinds[0]


def _writable(t, name: str) -> None:
    import torch

    # 1 = MemOverlap::Yes: some elements share memory, so parallel writes would race.
    _require(torch._debug_has_internal_overlap(t) != 1,
             f"{name}: several of its elements share memory (an expanded view?); pass a tensor that owns "
             "its elements, e.g. {name}.clone()")


def _extent(t, name: str) -> tuple[int, int]:
    view = as_view(t, name)
    return view.address, view.extent_from(view.address)


def _codec_shape(cdf, num_layers: int, num_channels: int, what: str) -> int:
    _require(tuple(cdf.shape[:2]) == (num_layers, num_channels),
             f"cdf: has shape {list(cdf.shape)} but {what} has {num_layers} layers and {num_channels} channels; "
             f"pass a cdf of shape [{num_layers}, {num_channels}, entries]")
    _require(cdf.shape[2] >= 2, f"cdf: has {cdf.shape[2]} entries per channel; at least 2 (one symbol) are needed")
    return int(cdf.shape[2])


def _host(t):
    return t.contiguous() if t.device.type == "cpu" else t.cpu().contiguous()


# --------------------------------------------------------------------------------------------- CDF

def calculate_cdf(input_tensor, num_bins: int):
    """Per-(layer, channel) CDF over the tokens of `input_tensor` [layers, tokens, channels]
    (integer values clamped to 0 .. num_bins - 1), scaled to 16 bits, as an int16 tensor
    [layers, channels, num_bins + 1] on the input's device."""
    import torch

    _check(input_tensor, "input_tensor", 3, tuple(_native.INT_KINDS))
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or not 1 <= num_bins <= 0xFFFF:
        raise ValueError(f"num_bins={num_bins!r} must be an int in 1..65535 (CDF entries are 16-bit)")
    device = _same_device(input_tensor=input_tensor)
    if device == "npu":
        return _calculate_cdf_torch(input_tensor, num_bins)
    nl, nt, nc = input_tensor.shape
    out = torch.empty((nl, nc, num_bins + 1), dtype=torch.int16)
    address, extent = _extent(input_tensor, "input_tensor")
    _native.calculate_cdf(address, _native.INT_KINDS[_dtype(input_tensor)], extent, (nl, nt, nc),
                          tuple(input_tensor.stride()), num_bins, out.data_ptr(), out.numel())
    return out


def _calculate_cdf_torch(input_tensor, num_bins: int):
    """calculate_cdf in torch ops on the tensor's device (exact integer arithmetic)."""
    import torch

    nl, nt, nc = input_tensor.shape
    device = input_tensor.device
    values = input_tensor.long().clamp(0, num_bins - 1)
    stream = (torch.arange(nl, device=device)[:, None, None] * nc + torch.arange(nc, device=device)) * num_bins
    counts = torch.zeros(nl * nc * num_bins, dtype=torch.long, device=device)
    counts.scatter_add_(0, (values + stream).reshape(-1), torch.ones(values.numel(), dtype=torch.long, device=device))
    below = torch.zeros((nl, nc, num_bins + 1), dtype=torch.long, device=device)
    below[..., 1:] = counts.view(nl, nc, num_bins).cumsum(-1)
    scaled = (0xFFFF - num_bins) * below // max(nt, 1) + torch.arange(num_bins + 1, device=device)
    return scaled.to(torch.int16)


# ------------------------------------------------------------------------------------------ encode

def encode_fast_new(cdf, input_sym, output_buffer, output_lengths) -> None:
    """Arithmetic-code input_sym [layers, tokens, channels] (uint8 / int8 symbols, each below
    cdf.shape[-1] - 1) with cdf [layers, channels, entries] (int16): the stream of (layer, channel)
    goes to output_buffer[layer, channel] (uint8, zero after its end), its byte count to
    output_lengths[layer, channel] (int32)."""
    _check(cdf, "cdf", 3, _CDF_DTYPES)
    _check(input_sym, "input_sym", 3, _SYMBOL_DTYPES)
    _check(output_buffer, "output_buffer", 3, ("uint8",))
    _check(output_lengths, "output_lengths", 2, ("int32",))
    device = _same_device(cdf=cdf, input_sym=input_sym, output_buffer=output_buffer, output_lengths=output_lengths)
    nl, nt, nc = input_sym.shape
    cdf_len = _codec_shape(cdf, nl, nc, "input_sym")
    _require(tuple(output_buffer.shape[:2]) == (nl, nc),
             f"output_buffer: has shape {list(output_buffer.shape)}, expected [{nl}, {nc}, buffer_size]")
    _require(tuple(output_lengths.shape) == (nl, nc),
             f"output_lengths: has shape {list(output_lengths.shape)}, expected [{nl}, {nc}]")
    if device == "npu":
        buffer, lengths = _host(output_buffer), _host(output_lengths)
        _encode(_host(cdf), _host(input_sym), buffer, lengths)
        output_buffer.copy_(buffer)
        output_lengths.copy_(lengths)
        return
    for name, t in (("output_buffer", output_buffer), ("output_lengths", output_lengths)):
        _require(t.is_contiguous(), f"{name}: must be contiguous (strides {list(t.stride())}); pass "
                                    f"{name}.contiguous() and read the results from it")
    _encode(cdf.contiguous(), input_sym, output_buffer, output_lengths, cdf_len)


def _encode(cdf, input_sym, output_buffer, output_lengths, cdf_len: int | None = None) -> None:
    sym_address, sym_extent = _extent(input_sym, "input_sym")
    _native.encode(cdf.data_ptr(), cdf.numel(), cdf_len or int(cdf.shape[2]), sym_address, sym_extent,
                   tuple(input_sym.shape), tuple(input_sym.stride()), output_buffer.data_ptr(),
                   int(output_buffer.shape[2]), output_buffer.numel(), output_lengths.data_ptr(),
                   output_lengths.numel())


# ------------------------------------------------------------------------------------------ decode

def _check_decode(cdf, bytestreams, ends, output, ends_name: str, bytes_ndim: int):
    _check(cdf, "cdf", 3, _CDF_DTYPES)
    _check(bytestreams, "bytestreams", bytes_ndim, ("uint8",))
    _check(ends, ends_name, None, ("int8", "uint8", "int16", "int32", "int64"))
    _check(output, "output", 3, _SYMBOL_DTYPES)
    device = _same_device(cdf=cdf, bytestreams=bytestreams, **{ends_name: ends}, output=output)
    nl, _, nc = output.shape
    _codec_shape(cdf, nl, nc, "output")
    _require(ends.numel() == nl * nc,
             f"{ends_name}: has {ends.numel()} entries, expected layers x channels = {nl * nc} (one per stream)")
    _writable(output, "output")
    return device


def _decode(packed: bool, cdf, bytestreams, ends, output) -> None:
    """Decode into `output` (uint8 / int8 on the host, any strides) from host tensors."""
    import torch

    cdf = cdf.contiguous()
    streams = bytestreams.contiguous()
    ends = ends.reshape(-1).to(torch.int64).contiguous()
    address, extent = _extent(output, "output")
    common = (tuple(output.shape), tuple(output.stride()))
    if packed:
        _native.decode_packed(cdf.data_ptr(), cdf.numel(), int(cdf.shape[2]), streams.data_ptr(), streams.numel(),
                              ends.data_ptr(), address, extent, *common)
    else:
        _native.decode_rows(cdf.data_ptr(), cdf.numel(), int(cdf.shape[2]), streams.data_ptr(), int(streams.shape[2]),
                            streams.numel(), ends.data_ptr(), address, extent, *common)


def _decode_on(device: str, packed: bool, cdf, bytestreams, ends, output) -> None:
    if device == "cpu":
        _decode(packed, cdf, bytestreams, ends, output)
        return
    decoded = output.cpu()
    _decode(packed, _host(cdf), _host(bytestreams), _host(ends), decoded)
    output.copy_(decoded)


def decode_fast_new(cdf, bytestreams, lengths, output) -> None:
    """Decode the streams of encode_fast_new: bytestreams [layers, channels, buffer_size] (uint8),
    lengths [layers, channels] (bytes per stream, 0 .. buffer_size) into output [layers, tokens,
    channels] (uint8 / int8)."""
    device = _check_decode(cdf, bytestreams, lengths, output, "lengths", 3)
    nl, _, nc = output.shape
    _require(tuple(bytestreams.shape[:2]) == (nl, nc),
             f"bytestreams: has shape {list(bytestreams.shape)}, expected [{nl}, {nc}, buffer_size]")
    _decode_on(device, False, cdf, bytestreams, lengths, output)


def decode_fast_prefsum(cdf, bytestreams, lengths_prefsum, output) -> None:
    """Decode streams packed back to back in bytestreams (1-D uint8): stream k (k = layer *
    channels + channel) is bytestreams[prefsum[k - 1]:prefsum[k]] (prefsum[-1] = 0), with
    lengths_prefsum the running sum of the lengths; bytes past the end read as zero."""
    device = _check_decode(cdf, bytestreams, lengths_prefsum, output, "lengths_prefsum", 1)
    _decode_on(device, True, cdf, bytestreams, lengths_prefsum, output)


# ------------------------------------------------------------------------------------------ rotary

_FLOATS = tuple(_native.FLOAT_KINDS)
_POSITIONS = ("int64", "int32")  # what torch indexing takes as positions (uint8 would be a mask)


def rotary_embedding_k_fused(old_positions, new_positions, key, head_size: int, cos_sin_cache,
                             is_neox: bool) -> None:
    """Rotate key [tokens, heads, dim] in place from the rotary embedding at old_positions to the
    one at new_positions (one position per token; negative ones count from the end of the cache)
    with cos_sin_cache [max_position, rot_dim] (cos half, then sin half), over the first rot_dim
    elements of each head: NeoX halves (is_neox) or GPT-J interleaved pairs. head_size is not used
    (LMCache's signature keeps it for its CUDA kernel)."""
    _check(key, "key", 3, _FLOATS)
    _check(cos_sin_cache, "cos_sin_cache", 2, _FLOATS)
    for name, positions in (("old_positions", old_positions), ("new_positions", new_positions)):
        _check(positions, name, 1, _POSITIONS)
        _require(positions.shape[0] == key.shape[0],
                 f"{name}: has {positions.shape[0]} positions but key has {key.shape[0]} tokens; pass one per token")
    device = _same_device(old_positions=old_positions, new_positions=new_positions, key=key,
                          cos_sin_cache=cos_sin_cache)
    max_position, rot_dim = cos_sin_cache.shape
    _require(rot_dim >= 2 and rot_dim % 2 == 0,
             f"cos_sin_cache: has rotary dimension {rot_dim}; it must be even (cos half, sin half)")
    _require(rot_dim <= key.shape[2],
             f"key: heads of {key.shape[2]} elements are shorter than cos_sin_cache's rotary dimension {rot_dim}")
    _writable(key, "key")
    if device == "npu":
        for name, positions in (("old_positions", old_positions), ("new_positions", new_positions)):
            if positions.numel():
                low, high = int(positions.min()), int(positions.max())
                if low < -max_position or high >= max_position:
                    raise IndexError(f"{name}: holds {low if low < -max_position else high}, outside the "
                                     f"cos_sin_cache's {max_position} positions; build the cache for more positions")
        _rotate_torch(old_positions, new_positions, key, cos_sin_cache, bool(is_neox))
        return
    import torch

    cache = cos_sin_cache.contiguous()
    old = old_positions.to(torch.int64).contiguous()
    new = new_positions.to(torch.int64).contiguous()
    address, extent = _extent(key, "key")
    _native.rotary_embedding_k_fused(address, _native.FLOAT_KINDS[_dtype(key)], extent, tuple(key.shape),
                                     tuple(key.stride()), cache.data_ptr(), _native.FLOAT_KINDS[_dtype(cache)],
                                     max_position, rot_dim, old.data_ptr(), new.data_ptr(), bool(is_neox))


def rotary_embedding_k_fused_strided(old_positions, new_positions, key, head_size: int, head_stride: int,
                                     cos_sin_cache, is_neox: bool) -> None:
    """rotary_embedding_k_fused for key [tokens, heads, head_stride] holding K in the first
    head_size elements of each head (the rest, e.g. V, is left alone)."""
    _check(key, "key", 3)
    _require(key.shape[2] == head_stride,
             f"key: heads have {key.shape[2]} elements but head_stride={head_stride}; pass key as "
             "[tokens, heads, head_stride]")
    _require(0 < head_size <= head_stride, f"head_size={head_size} must be in 1..head_stride={head_stride}")
    rotary_embedding_k_fused(old_positions, new_positions, key[..., :head_size], head_size, cos_sin_cache, is_neox)


def _rotate_torch(old_positions, new_positions, key, cos_sin_cache, is_neox: bool) -> None:
    """The rotation in torch ops on the tensors' device, one op per step in the native kernel's
    order (so the rounding is the same as torch's own eager formula)."""
    half = cos_sin_cache.shape[1] // 2
    rot = 2 * half
    if is_neox:
        x, y = key[..., :half], key[..., half:rot]
    else:
        x, y = key[..., 0:rot:2], key[..., 1:rot:2]

    def cos_sin(positions) -> tuple[Any, Any]:
        rows = cos_sin_cache[positions].unsqueeze(1)  # [tokens, 1, rot]: broadcast over heads
        return rows[..., :half], rows[..., half:]

    old_cos, old_sin = cos_sin(old_positions)
    new_cos, new_sin = cos_sin(new_positions)
    x_back = x * old_cos + y * old_sin
    y_back = y * old_cos - x * old_sin
    x_new = x_back * new_cos - y_back * new_sin
    y_new = y_back * new_cos + x_back * new_sin
    x.copy_(x_new)
    y.copy_(y_new)
