# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of CacheGen's codec and CacheBlend's K rotation (native/include/lmcache_ascend/cachegen_codec.hpp).

Takes plain integers (addresses, element counts, element strides) so it stays free of torch; the
Python layer (`lmcache_ascend.codec`) turns tensors into these numbers. Releases the GIL while the
kernels run.
"""
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t

from lmcache_ascend._native.native cimport (
    CodecShape, FloatKind, IntKind, IntTensor, RotaryRequest, Status, StatusCode, SymbolTensor,
    cachegen_decode_packed as _decode_packed, cachegen_decode_rows as _decode_rows,
    cachegen_encode as _encode, calculate_cdf as _calculate_cdf,
    rotary_embedding_k_fused as _rotary,
)

include "status.pxi"

# calculate_cdf input kinds and rotary float kinds (the header's enums), by torch dtype name.
INT_KINDS = {"int8": <int>IntKind.kInt8, "uint8": <int>IntKind.kUint8, "int16": <int>IntKind.kInt16,
             "int32": <int>IntKind.kInt32, "int64": <int>IntKind.kInt64}
FLOAT_KINDS = {"float16": <int>FloatKind.kFloat16, "bfloat16": <int>FloatKind.kBFloat16,
               "float32": <int>FloatKind.kFloat32}


cdef SymbolTensor _symbols(uintptr_t address, int64_t extent, strides):
    cdef SymbolTensor s
    s.data = <uint8_t*>address
    s.extent = extent
    s.layer_stride, s.token_stride, s.channel_stride = strides
    return s


cdef CodecShape _shape(shape, int64_t cdf_len):
    cdef CodecShape s
    s.num_layers, s.num_tokens, s.num_channels = shape
    s.cdf_len = cdf_len
    return s


def calculate_cdf(uintptr_t address, int kind, int64_t extent, shape, strides, int64_t num_bins,
                  uintptr_t out, int64_t out_len):
    """CDFs of a strided integer tensor [layers, tokens, channels] (INT_KINDS) into a contiguous
    int16 [layers, channels, num_bins + 1] at `out`."""
    if kind not in INT_KINDS.values():
        raise ValueError(f"kind={kind} is not one of {INT_KINDS}")
    cdef IntTensor t
    t.data = <const void*>address
    t.kind = <IntKind>kind
    t.extent = extent
    t.layer_stride, t.token_stride, t.channel_stride = strides
    cdef int64_t nl, nt, nc
    nl, nt, nc = shape
    cdef Status st
    with nogil:
        st = _calculate_cdf(t, nl, nt, nc, num_bins, <int16_t*>out, out_len)
    raise_on_error(st)


def encode(uintptr_t cdf, int64_t cdf_entries, int64_t cdf_len, uintptr_t symbols, int64_t symbols_extent,
           shape, strides, uintptr_t out_buffer, int64_t buffer_size, int64_t out_buffer_len,
           uintptr_t out_lengths, int64_t out_lengths_len):
    """Encode uint8 symbols (strided [layers, tokens, channels]) with a contiguous uint16 cdf
    [layers, channels, cdf_len] into contiguous rows [layers, channels, buffer_size] and int32 lengths."""
    cdef SymbolTensor s = _symbols(symbols, symbols_extent, strides)
    cdef CodecShape sh = _shape(shape, cdf_len)
    cdef Status st
    with nogil:
        st = _encode(<const uint16_t*>cdf, cdf_entries, s, sh, <uint8_t*>out_buffer, buffer_size, out_buffer_len,
                     <int32_t*>out_lengths, out_lengths_len)
    raise_on_error(st)


def decode_rows(uintptr_t cdf, int64_t cdf_entries, int64_t cdf_len, uintptr_t streams, int64_t row_size,
                int64_t streams_len, uintptr_t ends, uintptr_t symbols, int64_t symbols_extent, shape, strides):
    """Decode one stream per contiguous row [layers, channels, row_size], ends = int64 lengths."""
    cdef SymbolTensor s = _symbols(symbols, symbols_extent, strides)
    cdef CodecShape sh = _shape(shape, cdf_len)
    cdef Status st
    with nogil:
        st = _decode_rows(<const uint16_t*>cdf, cdf_entries, <const uint8_t*>streams, row_size, streams_len,
                          <const int64_t*>ends, sh, s)
    raise_on_error(st)


def decode_packed(uintptr_t cdf, int64_t cdf_entries, int64_t cdf_len, uintptr_t streams, int64_t streams_len,
                  uintptr_t ends, uintptr_t symbols, int64_t symbols_extent, shape, strides):
    """Decode streams packed back to back, ends = int64 running sums of their lengths."""
    cdef SymbolTensor s = _symbols(symbols, symbols_extent, strides)
    cdef CodecShape sh = _shape(shape, cdf_len)
    cdef Status st
    with nogil:
        st = _decode_packed(<const uint16_t*>cdf, cdf_entries, <const uint8_t*>streams, streams_len,
                            <const int64_t*>ends, sh, s)
    raise_on_error(st)


def rotary_embedding_k_fused(uintptr_t key, int key_kind, int64_t key_extent, key_shape, key_strides,
                             uintptr_t cos_sin_cache, int cache_kind, int64_t max_position, int64_t rot_dim,
                             uintptr_t old_positions, uintptr_t new_positions, bint is_neox):
    """Rotate keys (strided [tokens, heads, dim], FLOAT_KINDS) in place from old to new positions
    (contiguous int64, one per token) with a contiguous cache [max_position, rot_dim]."""
    for name, kind in (("key_kind", key_kind), ("cache_kind", cache_kind)):
        if kind not in FLOAT_KINDS.values():
            raise ValueError(f"{name}={kind} is not one of {FLOAT_KINDS}")
    cdef RotaryRequest r
    r.key = <void*>key
    r.key_kind = <FloatKind>key_kind
    r.key_extent = key_extent
    r.num_tokens, r.num_heads, r.key_last_dim = key_shape
    r.token_stride, r.head_stride, r.elem_stride = key_strides
    r.cos_sin_cache = <const void*>cos_sin_cache
    r.cache_kind = <FloatKind>cache_kind
    r.max_position = max_position
    r.rot_dim = rot_dim
    r.old_positions = <const int64_t*>old_positions
    r.new_positions = <const int64_t*>new_positions
    r.is_neox = is_neox
    cdef Status st
    with nogil:
        st = _rotary(r)
    raise_on_error(st)
