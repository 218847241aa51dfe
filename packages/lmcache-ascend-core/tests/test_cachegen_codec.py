"""CacheGen's codec and CacheBlend's K rotation (lmcache_ascend.codec, exported by lmcache_ascend.ops)
against LMCache 0.5.6's own baseline (lmcache/v1/platform/torch_ops/{cachegen,pos}_kernels.py):
bit-identical CDFs, bitstreams, decoded symbols and rotated keys, streams cross-decoded both ways,
bad input rejected before anything is written, and the NPU paths run with host tensors standing in."""
from __future__ import annotations

import pytest
import torch

import lmcache_ascend.ops as ops
from lmcache_ascend import codec
from kvref import same

baseline = pytest.importorskip("lmcache.v1.platform.torch_ops.cachegen_kernels",
                               reason="needs LMCache >= 0.5 (and numba) for its baseline")
pos_baseline = pytest.importorskip("lmcache.v1.platform.torch_ops.pos_kernels")

# (layers, tokens, channels, num_bins): 1 token, 1 bin, odd sizes, LMCache's 32 bins, wide alphabets.
SHAPES = [(1, 1, 1, 1), (2, 1, 5, 32), (3, 7, 4, 2), (2, 128, 4, 16), (4, 256, 33, 32), (1, 300, 3, 255),
          (2, 64, 2, 1000)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def symbols(shape, num_bins, kind, seed, dtype=torch.uint8):
    nl, nt, nc = shape
    if kind == "random":
        x = torch.randint(0, num_bins, shape, generator=gen(seed))
    elif kind == "same":  # one symbol everywhere: the most skewed CDF
        x = torch.full(shape, seed % num_bins)
    elif kind == "max":  # the largest symbol the CDF codes
        x = torch.full(shape, num_bins - 1)
    else:  # skewed: mostly 0, some high values
        x = torch.where(torch.rand(shape, generator=gen(seed)) < 0.9, 0, num_bins - 1)
    return x.to(dtype)


def packed(buffer, lengths):
    nl, nc, _ = buffer.shape
    parts = [buffer[l, c, :int(lengths[l, c])] for l in range(nl) for c in range(nc)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def encode_both(cdf, sym, buffer_size):
    nl, _, nc = sym.shape
    out = {}
    for name, fn in (("ours", ops.encode_fast_new), ("lmcache", baseline.encode_fast_new)):
        buf = torch.full((nl, nc, buffer_size), 0xA5, dtype=torch.uint8)  # sentinels: every byte is written
        lengths = torch.full((nl, nc), -3, dtype=torch.int32)
        fn(cdf, sym, buf, lengths)
        out[name] = (buf, lengths)
    return out


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES)
def test_calculate_cdf_is_lmcaches(shape, dtype):
    *dims, num_bins = shape
    # Values outside 0 .. num_bins - 1 (negative, too large) are clamped by both.
    low = -3 if dtype != torch.uint8 else 0
    high = min(num_bins + 3, 127 if dtype == torch.int8 else 256 if dtype == torch.uint8 else 10**6)
    x = torch.randint(low, high, dims, generator=gen(sum(shape))).to(dtype)
    expected = baseline.calculate_cdf(x, num_bins)
    assert same(ops.calculate_cdf(x, num_bins), expected)
    assert same(codec._calculate_cdf_torch(x, num_bins), expected)  # the NPU path's formula


def test_calculate_cdf_of_strided_input_and_no_tokens():
    x = torch.randint(0, 32, (3, 40, 16), generator=gen(1), dtype=torch.int8)
    view = x[:, 5:30, 1:12:2]  # LMCache slices tokens; channels strided as well
    assert same(ops.calculate_cdf(view, 32), baseline.calculate_cdf(view, 32))
    empty = ops.calculate_cdf(torch.zeros((2, 0, 3), dtype=torch.int8), 5)  # no tokens: the bin offsets
    assert same(empty, torch.arange(6, dtype=torch.int16).expand(2, 3, 6))


@pytest.mark.parametrize("kind", ["random", "same", "max", "skewed"])
@pytest.mark.parametrize("shape", SHAPES)
def test_encode_and_decode_are_lmcaches(shape, kind):
    *dims, num_bins = shape
    sym = symbols(tuple(dims), num_bins, kind, sum(shape))
    cdf = baseline.calculate_cdf(sym, num_bins)
    nl, nt, nc = dims
    enc = encode_both(cdf, sym, 2 * nt + 16)
    assert same(enc["ours"][0], enc["lmcache"][0]) and same(enc["ours"][1], enc["lmcache"][1])
    buf, lengths = enc["ours"]
    stream = packed(buf, lengths)
    prefsum = lengths.flatten().cumsum(0).reshape(nl, nc)
    for decode, streams, ends in ((ops.decode_fast_new, buf, lengths), (ops.decode_fast_prefsum, stream, prefsum)):
        base = getattr(baseline, decode.__name__)
        ours, theirs = torch.full(sym.shape, 0xEE, dtype=torch.uint8), torch.zeros(sym.shape, dtype=torch.uint8)
        decode(cdf, streams, ends, ours)
        base(cdf, streams, ends, theirs)
        assert same(ours, theirs) and same(ours, sym), decode.__name__


@pytest.mark.parametrize("seed", range(4))
def test_uneven_cdfs_and_lmcaches_calling_pattern(seed):
    # The upstream suite's CDFs (cumulative sums of random counts, not normalised) and LMCache's
    # encoder calling pattern: int8 symbols sliced by token range, one output buffer reused.
    nl, nt, nc, entries = 3, 200, 24, 17
    cdf = torch.randint(1, 100 * (seed + 1), (nl, nc, entries), generator=gen(seed)).cumsum(-1).to(torch.int16)
    sym = torch.randint(0, entries - 1, (nl, nt, nc), generator=gen(seed + 10), dtype=torch.int8)
    ours = (torch.zeros((nl, nc, 96), dtype=torch.uint8), torch.zeros((nl, nc), dtype=torch.int32))
    theirs = (torch.zeros((nl, nc, 96), dtype=torch.uint8), torch.zeros((nl, nc), dtype=torch.int32))
    for start in range(0, nt, 64):
        piece = sym[:, start:start + 64, :]
        ops.encode_fast_new(cdf, piece, *ours)
        baseline.encode_fast_new(cdf, piece, *theirs)
        assert same(ours[0], theirs[0]) and same(ours[1], theirs[1])
        # Into a strided int8 slice of a bigger output, as LMCache's decoder does.
        out_ours = torch.zeros((nl, nt, nc), dtype=torch.int8)
        out_theirs = torch.zeros((nl, nt, nc), dtype=torch.int8)
        ops.decode_fast_new(cdf, ours[0], ours[1], out_ours[:, start:start + piece.shape[1], :])
        baseline.decode_fast_new(cdf, ours[0], ours[1], out_theirs[:, start:start + piece.shape[1], :])
        assert same(out_ours, out_theirs)


def test_truncated_streams_decode_as_lmcaches():
    # Buffers too small for the stream (bytes dropped), rows under 4 bytes, and a packed stream
    # whose end offsets run past its bytes: what is missing reads as zero on both.
    sym = symbols((2, 100, 6), 32, "random", 3)
    cdf = baseline.calculate_cdf(sym, 32)
    for size in (0, 1, 3, 4, 9):
        enc = encode_both(cdf, sym, size)
        assert same(enc["ours"][0], enc["lmcache"][0]) and same(enc["ours"][1], enc["lmcache"][1])
        buf, lengths = enc["ours"]
        ours, theirs = torch.zeros(sym.shape, dtype=torch.uint8), torch.zeros(sym.shape, dtype=torch.uint8)
        ops.decode_fast_new(cdf, buf, lengths, ours)
        baseline.decode_fast_new(cdf, buf, lengths, theirs)
        assert same(ours, theirs)
    buf, lengths = encode_both(cdf, sym, 300)["ours"]
    stream = packed(buf, lengths)
    prefsum = lengths.flatten().cumsum(0).reshape(lengths.shape)
    for cut in (len(stream), len(stream) - 1, len(stream) // 2, 2, 0):
        ours, theirs = torch.zeros(sym.shape, dtype=torch.uint8), torch.zeros(sym.shape, dtype=torch.uint8)
        ops.decode_fast_prefsum(cdf, stream[:cut].clone(), prefsum, ours)
        baseline.decode_fast_prefsum(cdf, stream[:cut].clone(), prefsum, theirs)
        assert same(ours, theirs), cut


def test_streams_cross_decode_both_ways():
    sym = symbols((4, 256, 64), 32, "random", 5)
    cdf = baseline.calculate_cdf(sym, 32)
    buf_ours, len_ours = torch.zeros((4, 64, 600), dtype=torch.uint8), torch.zeros((4, 64), dtype=torch.int32)
    buf_theirs, len_theirs = torch.zeros_like(buf_ours), torch.zeros_like(len_ours)
    ops.encode_fast_new(cdf, sym, buf_ours, len_ours)
    baseline.encode_fast_new(cdf, sym, buf_theirs, len_theirs)
    for decode_with, buf, lengths in ((baseline, buf_ours, len_ours), (ops, buf_theirs, len_theirs)):
        out = torch.zeros(sym.shape, dtype=torch.uint8)
        decode_with.decode_fast_new(cdf, buf, lengths, out)
        assert same(out, sym)
        out.zero_()
        decode_with.decode_fast_prefsum(cdf, packed(buf, lengths), lengths.flatten().cumsum(0), out)
        assert same(out, sym)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("key_dtype", DTYPES)
def test_rotary_is_lmcaches(key_dtype, cache_dtype, is_neox):
    g = gen(7)
    cache = torch.randn(300, 64, generator=g).to(cache_dtype)
    key = torch.randn(33, 4, 64, generator=g).to(key_dtype)
    old = torch.randint(0, 300, (33,), generator=g)
    new = torch.randint(-300, 300, (33,), generator=g)  # negative positions count from the end on both
    ours, theirs, npu_formula = key.clone(), key.clone(), key.clone()
    ops.rotary_embedding_k_fused(old, new, ours, 64, cache, is_neox)
    pos_baseline.rotary_embedding_k_fused(old, new, theirs, 64, cache, is_neox)
    codec._rotate_torch(old, new, npu_formula, cache, is_neox)
    assert same(ours, theirs) and same(npu_formula, theirs)


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_strided_and_partial_rotation(is_neox):
    g = gen(8)
    cache = torch.randn(100, 32, generator=g, dtype=torch.float16)  # rot_dim 32 < head_size 48
    kv = torch.randn(10, 3, 80, generator=g, dtype=torch.bfloat16)  # K = [:48], V = [48:]
    pos = torch.randint(0, 100, (10,), generator=g, dtype=torch.int32)
    ours, theirs = kv.clone(), kv.clone()
    ops.rotary_embedding_k_fused_strided(pos, pos.flip(0), ours, 48, 80, cache, is_neox)
    pos_baseline.rotary_embedding_k_fused_strided(pos, pos.flip(0), theirs, 48, 80, cache, is_neox)
    assert same(ours, theirs) and same(ours[..., 32:], kv[..., 32:])
    # A key whose heads are not contiguous (every other head of a bigger tensor).
    big = torch.randn(10, 6, 32, generator=g)
    ours, theirs = big.clone(), big.clone()
    ops.rotary_embedding_k_fused(pos, pos + 1, ours[:, ::2], 32, cache.float(), is_neox)
    pos_baseline.rotary_embedding_k_fused(pos, pos + 1, theirs[:, ::2], 32, cache.float(), is_neox)
    assert same(ours, theirs)


def _untouched(tensors, fn, error, match):
    before = [t.clone() for t in tensors]
    with pytest.raises(error, match=match):
        fn()
    assert all(same(a, b) for a, b in zip(tensors, before)), "an output was written before the error"


def test_bad_codec_input_is_rejected_before_any_write():
    sym = symbols((2, 10, 3), 8, "random", 0)
    cdf = baseline.calculate_cdf(sym, 8)
    buf, lengths = torch.full((2, 3, 32), 1, dtype=torch.uint8), torch.full((2, 3), 2, dtype=torch.int32)
    outs = [buf, lengths]
    bad_sym = sym.clone()
    bad_sym[1, 9, 2] = 8  # the CDF of 8 bins codes symbols 0..7
    _untouched(outs, lambda: ops.encode_fast_new(cdf, bad_sym, buf, lengths), ValueError,
               r"input_sym\[1, 9, 2\] = 8 .* symbols 0..7")
    _untouched(outs, lambda: ops.encode_fast_new(cdf, sym.float(), buf, lengths), ValueError,
               "input_sym: dtype float32 is not supported")
    _untouched(outs, lambda: ops.encode_fast_new(cdf[:1], sym, buf, lengths), ValueError, r"cdf: has shape \[1, 3, 9\]")
    _untouched(outs, lambda: ops.encode_fast_new(cdf, sym, buf, lengths.long()), ValueError, "output_lengths: dtype int64")
    _untouched(outs, lambda: ops.encode_fast_new(cdf, sym, buf[:, :2], lengths), ValueError, "output_buffer: has shape")
    wide = torch.zeros((2, 3, 64), dtype=torch.uint8)
    _untouched([wide], lambda: ops.encode_fast_new(cdf, sym, wide[..., ::2], lengths), ValueError,
               "output_buffer: must be contiguous")
    _untouched(outs, lambda: ops.encode_fast_new(cdf.to("meta"), sym, buf, lengths), ValueError,
               "tensors on different devices")

    ops.encode_fast_new(cdf, sym, buf, lengths)
    out = torch.full(sym.shape, 0x5A, dtype=torch.uint8)
    too_long = lengths.clone()
    too_long[0, 1] = 33
    _untouched([out], lambda: ops.decode_fast_new(cdf, buf, too_long, out), ValueError,
               r"lengths\[0, 1\] = 33 is outside 0..32")
    _untouched([out], lambda: ops.decode_fast_new(cdf, buf, lengths[:1], out), ValueError, "lengths: has 3 entries")
    prefsum = lengths.flatten().cumsum(0)
    negative = prefsum.clone()
    negative[2] = -1
    _untouched([out], lambda: ops.decode_fast_prefsum(cdf, packed(buf, lengths), negative, out), ValueError,
               r"lengths_prefsum\[2\] = -1 is negative")
    _untouched([out], lambda: ops.decode_fast_prefsum(cdf, packed(buf, lengths).view(1, -1), prefsum, out),
               ValueError, "bytestreams: has shape")
    _untouched([out], lambda: ops.decode_fast_prefsum(cdf, packed(buf, lengths), prefsum, out.float()), ValueError,
               "output: dtype float32")
    expanded = torch.zeros((2, 1, 3), dtype=torch.uint8).expand(2, 10, 3)
    _untouched([expanded], lambda: ops.decode_fast_new(cdf, buf, lengths, expanded), ValueError,
               "output: several of its elements share memory")
    with pytest.raises(ValueError, match="num_bins=0 must be an int in 1..65535"):
        ops.calculate_cdf(sym, 0)
    with pytest.raises(ValueError, match="input_tensor: has shape"):
        ops.calculate_cdf(sym[0], 8)


def test_bad_rotary_input_is_rejected_before_any_write():
    cache = torch.randn(50, 16)
    key = torch.randn(4, 2, 16)
    pos = torch.arange(4)
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos, torch.tensor([0, 1, 50, 2]), key, 16, cache, True),
               IndexError, r"new_positions\[2\] = 50 is outside the cos_sin_cache's 50 positions")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos, pos - 51, key, 16, cache, True), IndexError,
               r"new_positions\[0\] = -51")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos[:3], pos, key, 16, cache, True), ValueError,
               "old_positions: has 3 positions but key has 4 tokens")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos, pos, key, 16, torch.randn(50, 15), True), ValueError,
               "rotary dimension 15; it must be even")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos, pos, key, 16, torch.randn(50, 32), True), ValueError,
               "shorter than cos_sin_cache's rotary dimension 32")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos, pos, key.double(), 16, cache, True), ValueError,
               "key: dtype float64")
    _untouched([key], lambda: ops.rotary_embedding_k_fused(pos.to(torch.uint8), pos, key, 16, cache, True),
               ValueError, "old_positions: dtype uint8")
    _untouched([key], lambda: ops.rotary_embedding_k_fused_strided(pos, pos, key, 8, 12, cache, True), ValueError,
               "head_stride=12")
    expanded = torch.randn(4, 1, 16).expand(4, 2, 16)
    _untouched([expanded], lambda: ops.rotary_embedding_k_fused(pos, pos, expanded, 16, cache, True), ValueError,
               "key: several of its elements share memory")


def test_npu_paths_with_host_tensors_standing_in(monkeypatch):
    """On an NPU, calculate_cdf and the rotation run torch ops on the device and the coder runs on
    the host between two copies; here host tensors say they are on an npu to run those paths."""
    monkeypatch.setattr(codec, "_device_of", lambda t: "npu")
    torch_formula = []
    for name in ("_calculate_cdf_torch", "_rotate_torch"):
        real = getattr(codec, name)
        monkeypatch.setattr(codec, name, lambda *a, _real=real, _name=name: (torch_formula.append(_name), _real(*a))[1])
    sym = symbols((3, 50, 8), 32, "random", 9)
    cdf = ops.calculate_cdf(sym, 32)
    assert same(cdf, baseline.calculate_cdf(sym, 32))
    enc = encode_both(cdf, sym, 128)
    assert same(enc["ours"][0], enc["lmcache"][0]) and same(enc["ours"][1], enc["lmcache"][1])
    buf, lengths = enc["ours"]
    out = torch.zeros((3, 80, 8), dtype=torch.uint8)
    ops.decode_fast_new(cdf, buf, lengths, out[:, 10:60])
    assert same(out[:, 10:60], sym) and not out[:, :10].any() and not out[:, 60:].any()
    out.zero_()
    ops.decode_fast_prefsum(cdf, packed(buf, lengths), lengths.flatten().cumsum(0), out[:, 10:60])
    assert same(out[:, 10:60], sym)
    cache, key, pos = torch.randn(64, 16), torch.randn(5, 2, 16, dtype=torch.bfloat16), torch.arange(5)
    ours, theirs = key.clone(), key.clone()
    ops.rotary_embedding_k_fused(pos, pos + 3, ours, 16, cache, False)
    pos_baseline.rotary_embedding_k_fused(pos, pos + 3, theirs, 16, cache, False)
    assert same(ours, theirs)
    with pytest.raises(IndexError, match="new_positions: holds 64"):
        ops.rotary_embedding_k_fused(pos, pos + 60, ours, 16, cache, False)
    assert same(ours, theirs)
    assert torch_formula == ["_calculate_cdf_torch", "_rotate_torch"]


def test_ops_exports_our_codec():
    for name in ("calculate_cdf", "encode_fast_new", "decode_fast_new", "decode_fast_prefsum",
                 "rotary_embedding_k_fused", "rotary_embedding_k_fused_strided"):
        assert getattr(ops, name) is getattr(codec, name)
