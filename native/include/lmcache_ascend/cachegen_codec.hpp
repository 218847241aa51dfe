// CacheGen's per-channel arithmetic codec and CacheBlend's fused K rotation, on the host.
//
// The bitstream is LMCache's (its CUDA kernels and its numba baseline produce the same bytes): a
// 32-bit binary arithmetic coder with 16-bit CDFs, one independent stream per (layer, channel),
// so chunks encoded by any engine decode on any other. Work is split over (layer, channel) on the
// shared thread pool. Every entry validates everything it will read or write first and returns a
// Status naming the argument, the value and the fix before touching any output.
#pragma once

#include <cstdint>

#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

// A strided 3-D byte tensor [layers, tokens, channels] (element strides; the memory from `data`
// holds `extent` bytes, every element addressed must lie inside it).
struct SymbolTensor {
  uint8_t* data = nullptr;
  int64_t extent = 0;
  int64_t layer_stride = 0;
  int64_t token_stride = 0;
  int64_t channel_stride = 0;
};

struct CodecShape {
  int64_t num_layers = 0;
  int64_t num_tokens = 0;
  int64_t num_channels = 0;
  int64_t cdf_len = 0;  // entries per (layer, channel) CDF; symbols are 0 .. cdf_len - 2
};

// The input of calculate_cdf: a strided integer tensor [layers, tokens, channels].
enum class IntKind : int { kInt8 = 0, kUint8 = 1, kInt16 = 2, kInt32 = 3, kInt64 = 4 };
struct IntTensor {
  const void* data = nullptr;
  IntKind kind = IntKind::kInt8;
  int64_t extent = 0;  // elements
  int64_t layer_stride = 0;
  int64_t token_stride = 0;
  int64_t channel_stride = 0;
};

// Per-(layer, channel) CDF over tokens of `input` (values clamped to [0, num_bins)), scaled to
// 16 bits: out[l][c][i] = (0xFFFF - num_bins) * count(values < i) / num_tokens + i, as int16.
// `out` is contiguous [layers, channels, num_bins + 1] with `out_len` entries.
Status calculate_cdf(const IntTensor& input, int64_t num_layers, int64_t num_tokens, int64_t num_channels,
                     int64_t num_bins, int16_t* out, int64_t out_len);

// Encodes symbols [layers, tokens, channels] into out_buffer (contiguous [layers, channels,
// buffer_size]; each row is the stream of one (layer, channel), zero after its end; bytes past
// buffer_size are dropped) and out_lengths (contiguous [layers, channels], bytes per row).
// cdf: contiguous [layers, channels, cdf_len] of unsigned 16-bit entries.
Status cachegen_encode(const uint16_t* cdf, int64_t cdf_entries, const SymbolTensor& symbols,
                       const CodecShape& shape, uint8_t* out_buffer, int64_t buffer_size, int64_t out_buffer_len,
                       int32_t* out_lengths, int64_t out_lengths_len);

// Decodes into symbols (written, [layers, tokens, channels]) from one stream per (layer, channel):
//  - rows (decode_fast_new): `streams` is contiguous [layers, channels, row_size], stream k is
//    row k, `ends[k]` its length (0 .. row_size);
//  - packed (decode_fast_prefsum): `streams` holds `streams_len` bytes, stream k is
//    [ends[k - 1], ends[k]) (ends[-1] = 0), ends >= 0; bytes past streams_len read as zero.
// ends has num_layers * num_channels entries.
Status cachegen_decode_rows(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams, int64_t row_size,
                            int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                            const SymbolTensor& symbols);
Status cachegen_decode_packed(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams,
                              int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                              const SymbolTensor& symbols);

// Rotates keys [tokens, heads, >= rot_dim] in place from the rotary embedding at old_positions
// to the one at new_positions (NeoX halves or GPT-J interleaved pairs), computing in the type
// torch promotes the key and cache dtypes to, rounding after every operation as torch's eager
// ops do, so results are bit-identical to the same formula in torch on the CPU.
enum class FloatKind : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };
struct RotaryRequest {
  void* key = nullptr;
  FloatKind key_kind = FloatKind::kFloat32;
  int64_t key_extent = 0;  // elements addressable from key
  int64_t num_tokens = 0, num_heads = 0, key_last_dim = 0;
  int64_t token_stride = 0, head_stride = 0, elem_stride = 0;
  const void* cos_sin_cache = nullptr;  // contiguous [max_position, rot_dim]: cos halves, then sin
  FloatKind cache_kind = FloatKind::kFloat32;
  int64_t max_position = 0, rot_dim = 0;
  const int64_t* old_positions = nullptr;  // num_tokens each; negative counts from the end
  const int64_t* new_positions = nullptr;
  bool is_neox = true;
};
Status rotary_embedding_k_fused(const RotaryRequest& request);

}  // namespace lmcache_ascend
