// CacheGen's arithmetic codec and CacheBlend's fused K rotation (see cachegen_codec.hpp).
//
// Coder state: [low, high] is the current interval of a 32-bit code space; a symbol s narrows it
// to the slice [cdf[s], cdf[s + 1]) of 0x10000 (the last symbol's upper bound is 0x10000). When
// both ends share their top bit, that bit is settled and shifted out; when the interval straddles
// the middle within the second and third quarters, it is widened around the middle and the
// undecided bit is counted as pending (emitted, inverted, after the next settled bit).

#include "lmcache_ascend/cachegen_codec.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "lmcache_ascend/thread_pool.hpp"

// The rotation must round after every multiply and add, as torch's separate eager ops do: no
// fused multiply-add contraction.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lmcache_ascend {
namespace {

constexpr uint64_t kMask32 = 0xFFFFFFFFull;
constexpr uint64_t kTop = 0x80000000ull;
constexpr uint64_t kSecond = 0x40000000ull;
constexpr uint64_t kScale = 0x10000ull;  // CDF entries are fractions of 2^16
constexpr int64_t kStreamsPerTask = 16;  // neighbouring channels share cache lines of the symbols

Status invalid(std::string msg) { return Status::Error(StatusCode::kInvalidArgument, std::move(msg)); }

// Largest element offset of a [a, b, c] tensor with non-negative strides, or -1 when it is empty.
int64_t last_offset(int64_t a, int64_t b, int64_t c, int64_t sa, int64_t sb, int64_t sc) {
  if (a == 0 || b == 0 || c == 0) return -1;
  return (a - 1) * sa + (b - 1) * sb + (c - 1) * sc;
}

Status check_strided(const char* name, int64_t extent, const CodecShape& s, int64_t sl, int64_t st, int64_t sc) {
  if (sl < 0 || st < 0 || sc < 0) {
    return invalid(std::string(name) + ": negative strides are not supported; pass a .contiguous() copy");
  }
  int64_t last = last_offset(s.num_layers, s.num_tokens, s.num_channels, sl, st, sc);
  if (last >= extent) {
    return invalid(std::string(name) + ": its strides reach element " + std::to_string(last) +
                   " but only " + std::to_string(extent) + " are addressable; pass a tensor that owns its elements");
  }
  return Status::Ok();
}

Status check_shape(const CodecShape& s, int64_t cdf_entries) {
  if (s.num_layers < 0 || s.num_tokens < 0 || s.num_channels < 0) return invalid("shape: negative dimension");
  if (s.cdf_len < 2) {
    return invalid("cdf: last dimension is " + std::to_string(s.cdf_len) +
                   "; a CDF needs at least 2 entries (one symbol), e.g. calculate_cdf(x, num_bins).shape[-1]");
  }
  if (cdf_entries != s.num_layers * s.num_channels * s.cdf_len) {
    return invalid("cdf: holds " + std::to_string(cdf_entries) + " entries, expected layers x channels x cdf_len = " +
                   std::to_string(s.num_layers * s.num_channels * s.cdf_len));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Encoder

// Leading zeros of a 32-bit value (32 for 0).
// (x << 1) | 1 is never 0, so no branch for x == 0.
inline int clz32(uint64_t x) { return __builtin_clzll((x << 1) | 1) - 31; }

// Bits out most significant first, in whole bytes.
class BitWriter {
 public:
  BitWriter(uint8_t* out, int64_t capacity) : out_(out), capacity_(capacity) {}
  // Appends the low `count` (0..32) bits of `bits`. The whole bytes go out at once: 8 bytes are
  // stored where the row has room for them (the later ones are overwritten by the next store).
  void put(uint64_t bits, int count) {
    acc_ = (acc_ << count) | (bits & ((1ull << count) - 1));
    bits_ += count;
    if (written_ + 8 <= capacity_) {
      const uint64_t word = __builtin_bswap64((acc_ << 1) << (63 - bits_));  // big-endian: first bit first
      std::memcpy(out_ + written_, &word, 8);
      written_ += bits_ >> 3;
    } else {
      for (; bits_ >= 8; bits_ -= 8) store(static_cast<uint8_t>(acc_ >> (bits_ - 8)));
    }
    bits_ &= 7;
    acc_ &= (1ull << bits_) - 1;
  }
  void put_run(uint32_t bit, uint64_t count) {
    const uint64_t ones = bit ? kMask32 : 0;
    for (; count > 32; count -= 32) put(ones, 32);
    put(ones, static_cast<int>(count));
  }
  // Pads the last partial byte with zeros; returns the bytes stored.
  int64_t finish() {
    for (; bits_ >= 8; bits_ -= 8) store(static_cast<uint8_t>(acc_ >> (bits_ - 8)));
    if (bits_ > 0) store(static_cast<uint8_t>(acc_ << (8 - bits_)));
    return written_;
  }

 private:
  void store(uint8_t byte) {
    if (written_ < capacity_) out_[written_++] = byte;  // a full row drops the rest, as LMCache's does
  }
  uint8_t* out_;
  int64_t capacity_;
  int64_t written_ = 0;
  uint64_t acc_ = 0;  // the last bits_ (< 8 between calls) bits not yet stored
  int bits_ = 0;
};

// The coder's renormalisation, all steps of one symbol at once (the bit-by-bit loop's branches
// are unpredictable and dominated the time). Settled steps: the n leading bits low and high share
// are output and shifted out. Then straddle steps: while low is 01... and high 10... below their
// differing top bits, both widen around the middle; k such steps = the leading ones of
// (low & ~high) from bit 30. These are the only two phases: after a straddle step the top bits
// are 0 and 1, so no settled step can follow.
struct Renorm {
  int settled;   // n
  int straddle;  // k
};
inline Renorm renorm_steps(uint64_t low, uint64_t high) {
  const int n = clz32(low ^ high);
  const uint64_t l = (low << n) & kMask32, h = ((high << n) | ((1ull << n) - 1)) & kMask32;
  return {n, clz32(~((l & ~h) << 1) & kMask32)};
}
inline void apply_steps(const Renorm& r, uint64_t& low, uint64_t& high) {
  low = (low << r.settled) & kMask32;
  high = ((high << r.settled) | ((1ull << r.settled) - 1)) & kMask32;
  const uint64_t any = r.straddle != 0;  // a straddle step clears low's top bit and sets high's
  low = (low << r.straddle) & (kMask32 >> any);
  high = ((high << r.straddle) | ((1ull << r.straddle) - 1) | (any << 31)) & kMask32;
}

// The encoder of one (layer, channel) stream.
class StreamEncoder {
 public:
  StreamEncoder(const uint16_t* cdf, int64_t cdf_len, uint8_t* out, int64_t capacity)
      : cdf_(cdf), last_symbol_(cdf_len - 2), writer_(out, capacity) {}
  void put(int64_t s) {
    const uint64_t lo_frac = cdf_[s];
    const uint64_t hi_frac = s == last_symbol_ ? kScale : cdf_[s + 1];
    const uint64_t range = ((high_ - low_) & kMask32) + 1;  // 2^32 for the full interval
    const uint64_t high = (low_ + ((range * hi_frac) >> 16) - 1) & kMask32;
    const uint64_t low = (low_ + ((range * lo_frac) >> 16)) & kMask32;
    const Renorm r = renorm_steps(low, high);
    // Settled steps write their first bit, the pending ones inverted after it, then the others.
    const int n = r.settled;
    const uint32_t bit = static_cast<uint32_t>(high >> 31) & 1u;
    if (pending_ + n <= 32) {  // one write (almost always), no branch on n (it is unpredictable)
      const uint64_t some = n != 0, none = some ^ 1;
      const int rest = n - static_cast<int>(some);
      const uint64_t head = (1ull << pending_) - 1 + bit;  // bit, then pending_ times !bit
      writer_.put((head << rest) | ((high >> (32 - n)) & ((1ull << rest) - 1)),
                  static_cast<int>((pending_ + n) & (0 - some)));
      pending_ &= 0 - none;
    } else if (n) {
      writer_.put(bit, 1);
      writer_.put_run(bit ^ 1u, pending_);
      writer_.put(high >> (32 - n), n - 1);
      pending_ = 0;
    }
    pending_ += static_cast<uint64_t>(r.straddle);
    low_ = low, high_ = high;
    apply_steps(r, low_, high_);
  }
  // Settles the final interval (one more bit plus the pending ones); returns the bytes written.
  int64_t finish() {
    const uint32_t bit = (low_ & kSecond) ? 1u : 0u;
    writer_.put(bit, 1);
    writer_.put_run(bit ^ 1u, pending_ + 1);
    return writer_.finish();
  }

 private:
  const uint16_t* cdf_;
  int64_t last_symbol_;
  uint64_t low_ = 0, high_ = kMask32, pending_ = 0;
  BitWriter writer_;
};

// ---------------------------------------------------------------------------------------------
// Decoder

// Bytes of one stream: [begin, end) of `data` (size bytes); anything outside reads as zero.
struct StreamBytes {
  const uint8_t* data;
  int64_t size;
  int64_t begin;
  int64_t end;
  uint32_t at(int64_t offset) const {
    return offset >= 0 && offset < end && offset < size ? data[offset] : 0u;
  }
};

// The bits of a stream from byte `start` on, most significant first (past the end: zeros).
class BitReader {
 public:
  BitReader(const StreamBytes& in, int64_t start) : in_(in), next_(start) {}
  // The next `count` (0..32) bits.
  uint64_t get(int count) {
    if (avail_ < count) refill();
    const uint64_t bits = count ? buf_ >> (64 - count) : 0;
    buf_ = count ? buf_ << count : buf_;
    avail_ -= count;
    return bits;
  }

 private:
  void refill() {
    for (; avail_ <= 56; avail_ += 8) buf_ |= static_cast<uint64_t>(in_.at(next_++)) << (56 - avail_);
  }
  const StreamBytes& in_;
  int64_t next_;
  uint64_t buf_ = 0;  // avail_ bits, from the top
  int avail_ = 0;
};

// Whether cdf[0..last_symbol] rises strictly (calculate_cdf's always do). Then the symbol of a
// target is the number of cdf[1..last_symbol] <= target, which a search without data-dependent
// branches finds; LMCache's search (stopping early on an exact hit) gives the same symbol there.
bool strictly_rising(const uint16_t* cdf, int64_t last_symbol) {
  for (int64_t i = 0; i < last_symbol; ++i) {
    if (cdf[i] >= cdf[i + 1]) return false;
  }
  return true;
}

inline int64_t count_at_most(const uint16_t* sorted, int64_t n, uint64_t target) {
  if (n == 0) return 0;
  const uint16_t* base = sorted;
  while (n > 1) {
    const int64_t half = n / 2;
    base = base[half - 1] <= target ? base + half : base;
    n -= half;
  }
  return (base - sorted) + (base[0] <= target);
}

// count_at_most for rows of up to kTableSymbols entries, comparing all of them at once (the
// search's steps each wait for the previous load). Entries past the row are 0xFFFF, which only a
// target of 0xFFFF counts; the caller subtracts those.
constexpr int64_t kTableSymbols = 32;
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef int16_t I16x8 __attribute__((vector_size(16)));
struct CdfTable {
  U16x8 v[kTableSymbols / 8];
  int64_t padding;
  void fill(const uint16_t* sorted, int64_t n) {
    uint16_t e[kTableSymbols];
    for (int64_t i = 0; i < kTableSymbols; ++i) e[i] = i < n ? sorted[i] : 0xFFFF;
    std::memcpy(v, e, sizeof(e));
    padding = kTableSymbols - n;
  }
  int64_t count_at_most(uint64_t target) const {
    const U16x8 t = {0, 0, 0, 0, 0, 0, 0, 0};
    const U16x8 tv = t + static_cast<uint16_t>(target);
    I16x8 acc = (I16x8)(v[0] <= tv);
    for (int64_t i = 1; i < kTableSymbols / 8; ++i) acc += (I16x8)(v[i] <= tv);
    int16_t lanes[8];
    std::memcpy(lanes, &acc, sizeof(lanes));
    const int64_t hits = -((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
    return hits - (target == 0xFFFF) * padding;
  }
};

// LMCache's search over any CDF row.
inline int64_t search_any(const uint16_t* cdf, int64_t last_symbol, uint64_t target) {
  int64_t left = 0, right = last_symbol + 1;
  while (left + 1 < right) {
    const int64_t mid = (left + right) / 2;
    const uint64_t c = cdf[mid];
    if (c < target) {
      left = mid;
    } else if (c > target) {
      right = mid;
    } else {
      left = mid;
      break;
    }
  }
  return left;
}

// floor(num / den) for num < 2^49, 0 < den <= 2^32. A 64-bit integer division is not pipelined
// (one every ~15-45 cycles); the double one is, and both operands are exact in a double. A
// quotient that is not an integer is at least 1/den below the next one, more than the rounding
// error (< 2^-4 / den), so truncating gives the floor; the check guards that argument.
inline uint64_t divide(uint64_t num, uint64_t den) {
  uint64_t q = static_cast<uint64_t>(static_cast<double>(num) / static_cast<double>(den));
  q -= q * den > num;
  return q;
}

// The decoder of one stream. first_word: the coder's initial 32-bit value (LMCache's rule
// differs between the two layouts).
class StreamDecoder {
 public:
  StreamDecoder(const uint16_t* cdf, int64_t cdf_len, const StreamBytes& in, uint64_t first_word)
      : cdf_(cdf), last_symbol_(cdf_len - 2), rising_(strictly_rising(cdf, cdf_len - 2)), bits_(in, in.begin + 4),
        value_(first_word) {
    table_ok_ = rising_ && last_symbol_ <= kTableSymbols;
    if (table_ok_) table_.fill(cdf + 1, last_symbol_);
  }
  // The next symbol; `more`: whether another follows (the coder then moves past this one).
  uint8_t next(bool more) {
    const uint64_t range = ((high_ - low_) & kMask32) + 1;  // 2^32 for the full interval
    const uint64_t target = divide((((value_ - low_) & kMask32) + 1) * kScale - 1, range) & 0xFFFF;
    const int64_t s = table_ok_ ? table_.count_at_most(target)
                      : rising_   ? count_at_most(cdf_ + 1, last_symbol_, target)
                                  : search_any(cdf_, last_symbol_, target);
    if (more) advance(s, range);
    return static_cast<uint8_t>(s);
  }

 private:
  void advance(int64_t s, uint64_t range) {
    const uint64_t lo_frac = cdf_[s];
    const uint64_t hi_frac = s == last_symbol_ ? kScale : cdf_[s + 1];
    high_ = (low_ + ((range * hi_frac) >> 16) - 1) & kMask32;
    low_ = (low_ + ((range * lo_frac) >> 16)) & kMask32;
    if (low_ <= high_) {
      // The encoder's steps (renorm_steps), each shifting in one bit. A straddle step maps value
      // to value - 2^30 before its shift, which below bit 31 is flipping bit 30: k straddle steps
      // flip the k bits from bit 30 down.
      const Renorm r = renorm_steps(low_, high_);
      value_ = ((value_ << r.settled) | bits_.get(r.settled)) & kMask32;
      const uint64_t flips = ((1ull << r.straddle) - 1) << (31 - r.straddle);
      value_ = (((value_ ^ flips) << r.straddle) | bits_.get(r.straddle)) & kMask32;
      apply_steps(r, low_, high_);
      return;
    }
    for (;;) {  // an inverted interval (a CDF that does not rise): LMCache's steps one by one
      if (low_ >= kTop || high_ < kTop) {
        low_ = (low_ << 1) & kMask32;
        high_ = ((high_ << 1) | 1) & kMask32;
      } else if (low_ >= kSecond && high_ < (kTop | kSecond)) {
        value_ = (value_ - kSecond) & kMask32;
        low_ = (low_ << 1) & (kMask32 >> 1);
        high_ = ((high_ << 1) | (kTop | 1)) & kMask32;
      } else {
        break;
      }
      value_ = ((value_ << 1) | bits_.get(1)) & kMask32;
    }
  }

  const uint16_t* cdf_;
  int64_t last_symbol_;
  bool rising_;
  bool table_ok_;
  CdfTable table_;
  BitReader bits_;
  uint64_t low_ = 0, high_ = kMask32, value_;
};

uint64_t read_word(const uint8_t* data, int64_t size, int64_t at) {
  uint64_t w = 0;
  for (int64_t i = 0; i < 4; ++i) w = (w << 8) | (at + i < size ? data[at + i] : 0u);
  return w;
}

Status check_symbols_out(const SymbolTensor& symbols, const CodecShape& shape) {
  return check_strided("output", symbols.extent, shape, symbols.layer_stride, symbols.token_stride,
                       symbols.channel_stride);
}

template <typename StreamOf>
void decode_all(const uint16_t* cdf, const CodecShape& shape, const SymbolTensor& symbols, StreamOf stream_of) {
  const int64_t streams = shape.num_layers * shape.num_channels;
  parallel_for(streams, kStreamsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t l = k / shape.num_channels, c = k % shape.num_channels;
      uint8_t* out = symbols.data + l * symbols.layer_stride + c * symbols.channel_stride;
      uint64_t first_word = 0;
      const StreamBytes in = stream_of(k, &first_word);
      StreamDecoder dec(cdf + k * shape.cdf_len, shape.cdf_len, in, first_word);
      for (int64_t t = 0; t < shape.num_tokens; ++t) out[t * symbols.token_stride] = dec.next(t + 1 < shape.num_tokens);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// calculate_cdf

template <typename T>
void cdf_rows(const IntTensor& in, int64_t l, int64_t c0, int64_t c1, int64_t num_tokens, int64_t num_channels,
              int64_t num_bins, std::vector<int64_t>& counts, int16_t* out) {
  const T* base = static_cast<const T*>(in.data) + l * in.layer_stride;
  const int64_t width = c1 - c0;
  counts.assign(static_cast<size_t>(width * num_bins), 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const T* row = base + t * in.token_stride;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t v = std::clamp<int64_t>(static_cast<int64_t>(row[c * in.channel_stride]), 0, num_bins - 1);
      ++counts[static_cast<size_t>((c - c0) * num_bins + v)];
    }
  }
  const int64_t scale = 0xFFFF - num_bins;
  for (int64_t c = c0; c < c1; ++c) {
    int16_t* dst = out + (l * num_channels + c) * (num_bins + 1);
    const int64_t* cnt = counts.data() + (c - c0) * num_bins;
    int64_t below = 0;
    for (int64_t i = 0; i <= num_bins; ++i) {
      const int64_t scaled = num_tokens > 0 ? scale * below / num_tokens + i : i;
      dst[i] = static_cast<int16_t>(static_cast<uint16_t>(scaled & 0xFFFF));
      if (i < num_bins) below += cnt[i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Rotary: reduced floats are computed in float and rounded (to nearest even) after every op.

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while (!(man & 0x400)) {
      man <<= 1;
      ++shift;
    }
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | (abs > 0x7F800000u ? 0x7E00 : 0x7C00));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to >= 65520: inf
  const int32_t exp = static_cast<int32_t>(abs >> 23) - 127;
  if (exp >= -14) {  // normal half
    const uint32_t man = abs & 0x7FFFFF;
    uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (man >> 13);
    const uint32_t rest = man & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // carry may reach the exponent: still right
    return static_cast<uint16_t>(sign | h);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal
  // Subnormal: value = man24 * 2^(exp - 23); in units of 2^-24 that is man24 >> (-exp - 1).
  const uint32_t man24 = (abs & 0x7FFFFF) | 0x800000;
  const int shift = -exp - 1;  // 14 .. 24
  uint32_t h = man24 >> shift;
  const uint32_t rest = man24 & ((1u << shift) - 1), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN (payloads are not kept)
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

struct F16 {
  using Storage = uint16_t;
  static float load(uint16_t v) { return half_to_float(v); }
  static uint16_t store(float v) { return float_to_half(v); }
  static float round(float v) { return half_to_float(float_to_half(v)); }
};
struct BF16 {
  using Storage = uint16_t;
  static float load(uint16_t v) { return bf16_to_float(v); }
  static uint16_t store(float v) { return float_to_bf16(v); }
  static float round(float v) { return bf16_to_float(float_to_bf16(v)); }
};
struct F32 {
  using Storage = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
  static float round(float v) { return v; }
};

// Key type K, cache type C, computing type P (torch's promotion of K and C).
template <typename K, typename C, typename P>
void rotate(const RotaryRequest& r) {
  using KS = typename K::Storage;
  using CS = typename C::Storage;
  auto* key = static_cast<KS*>(r.key);
  const auto* cache = static_cast<const CS*>(r.cos_sin_cache);
  const int64_t half = r.rot_dim / 2;
  auto mul = [](float a, float b) { return P::round(a * b); };
  auto add = [](float a, float b) { return P::round(a + b); };
  auto sub = [](float a, float b) { return P::round(a - b); };
  parallel_for(r.num_tokens, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      auto row_of = [&](int64_t p) { return cache + (p < 0 ? p + r.max_position : p) * r.rot_dim; };
      const CS* old_row = row_of(r.old_positions[t]);
      const CS* new_row = row_of(r.new_positions[t]);
      for (int64_t h = 0; h < r.num_heads; ++h) {
        KS* head = key + t * r.token_stride + h * r.head_stride;
        for (int64_t i = 0; i < half; ++i) {
          KS& xs = head[(r.is_neox ? i : 2 * i) * r.elem_stride];
          KS& ys = head[(r.is_neox ? half + i : 2 * i + 1) * r.elem_stride];
          // Inputs in the computing type (widening from K or C is exact).
          const float x = P::round(K::load(xs)), y = P::round(K::load(ys));
          const float oc = P::round(C::load(old_row[i])), os = P::round(C::load(old_row[half + i]));
          const float nc = P::round(C::load(new_row[i])), ns = P::round(C::load(new_row[half + i]));
          // Undo the old rotation, then apply the new one.
          const float x_back = add(mul(x, oc), mul(y, os));
          const float y_back = sub(mul(y, oc), mul(x, os));
          const float x_new = sub(mul(x_back, nc), mul(y_back, ns));
          const float y_new = add(mul(y_back, nc), mul(x_back, ns));
          xs = K::store(x_new);
          ys = K::store(y_new);
        }
      }
    }
  });
}

template <typename K, typename C>
void rotate_promoted(const RotaryRequest& r) {
  if constexpr (std::is_same_v<K, C>) {
    rotate<K, C, K>(r);
  } else {
    rotate<K, C, F32>(r);  // any two different of fp16, bf16, fp32 promote to fp32
  }
}

template <typename K>
void rotate_key(const RotaryRequest& r) {
  switch (r.cache_kind) {
    case FloatKind::kFloat16: return rotate_promoted<K, F16>(r);
    case FloatKind::kBFloat16: return rotate_promoted<K, BF16>(r);
    case FloatKind::kFloat32: return rotate_promoted<K, F32>(r);
  }
}

}  // namespace

Status calculate_cdf(const IntTensor& input, int64_t num_layers, int64_t num_tokens, int64_t num_channels,
                     int64_t num_bins, int16_t* out, int64_t out_len) {
  if (num_bins < 1 || num_bins > 0xFFFF) {
    return invalid("num_bins=" + std::to_string(num_bins) + " must be in 1..65535 (CDF entries are 16-bit)");
  }
  const CodecShape shape{num_layers, num_tokens, num_channels, num_bins + 1};
  if (Status st = check_strided("input_tensor", input.extent, shape, input.layer_stride, input.token_stride,
                                input.channel_stride);
      !st.ok()) {
    return st;
  }
  if (out_len != num_layers * num_channels * (num_bins + 1)) return invalid("calculate_cdf: output size mismatch");
  // Channel blocks sized so one block's counters stay small.
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(num_channels, 16384 / num_bins));
  const int64_t blocks_per_layer = num_channels == 0 ? 0 : (num_channels + block - 1) / block;
  parallel_for(num_layers * blocks_per_layer, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> counts;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t l = k / blocks_per_layer, c0 = (k % blocks_per_layer) * block;
      const int64_t c1 = std::min(num_channels, c0 + block);
      switch (input.kind) {
        case IntKind::kInt8: cdf_rows<int8_t>(input, l, c0, c1, num_tokens, num_channels, num_bins, counts, out); break;
        case IntKind::kUint8: cdf_rows<uint8_t>(input, l, c0, c1, num_tokens, num_channels, num_bins, counts, out); break;
        case IntKind::kInt16: cdf_rows<int16_t>(input, l, c0, c1, num_tokens, num_channels, num_bins, counts, out); break;
        case IntKind::kInt32: cdf_rows<int32_t>(input, l, c0, c1, num_tokens, num_channels, num_bins, counts, out); break;
        case IntKind::kInt64: cdf_rows<int64_t>(input, l, c0, c1, num_tokens, num_channels, num_bins, counts, out); break;
      }
    }
  });
  return Status::Ok();
}

Status cachegen_encode(const uint16_t* cdf, int64_t cdf_entries, const SymbolTensor& symbols,
                       const CodecShape& shape, uint8_t* out_buffer, int64_t buffer_size, int64_t out_buffer_len,
                       int32_t* out_lengths, int64_t out_lengths_len) {
  if (Status st = check_shape(shape, cdf_entries); !st.ok()) return st;
  if (Status st = check_strided("input_sym", symbols.extent, shape, symbols.layer_stride, symbols.token_stride,
                                symbols.channel_stride);
      !st.ok()) {
    return st;
  }
  const int64_t streams = shape.num_layers * shape.num_channels;
  if (buffer_size < 0 || out_buffer_len != streams * buffer_size) {
    return invalid("output_buffer: holds " + std::to_string(out_buffer_len) + " bytes, expected layers x channels x " +
                   std::to_string(buffer_size));
  }
  if (out_lengths_len != streams) {
    return invalid("output_lengths: holds " + std::to_string(out_lengths_len) + " entries, expected layers x channels = " +
                   std::to_string(streams));
  }
  if (buffer_size > INT32_MAX) return invalid("output_buffer: rows longer than 2^31 - 1 bytes do not fit int32 lengths");
  // Every symbol must have a CDF slice; found before anything is written.
  const int64_t last_symbol = shape.cdf_len - 2;
  const int64_t tokens = shape.num_tokens, channels = shape.num_channels;
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    for (int64_t t = 0; t < tokens; ++t) {
      const uint8_t* row = symbols.data + l * symbols.layer_stride + t * symbols.token_stride;
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t s = row[c * symbols.channel_stride];
        if (s > last_symbol) {
          return invalid("input_sym[" + std::to_string(l) + ", " + std::to_string(t) + ", " + std::to_string(c) +
                         "] = " + std::to_string(s) + " (as uint8) but the cdf's " + std::to_string(shape.cdf_len) +
                         " entries code symbols 0.." + std::to_string(last_symbol) +
                         "; pass a cdf with at least symbol + 2 entries (calculate_cdf(x, num_bins) codes 0..num_bins-1)");
        }
      }
    }
  }
  parallel_for(streams, kStreamsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t l = k / channels, c = k % channels;
      const uint8_t* sym = symbols.data + l * symbols.layer_stride + c * symbols.channel_stride;
      uint8_t* row = out_buffer + k * buffer_size;
      StreamEncoder enc(cdf + k * shape.cdf_len, shape.cdf_len, row, buffer_size);
      for (int64_t t = 0; t < tokens; ++t) enc.put(sym[t * symbols.token_stride]);
      const int64_t n = enc.finish();
      std::memset(row + n, 0, static_cast<size_t>(buffer_size - n));
      out_lengths[k] = static_cast<int32_t>(n);
    }
  });
  return Status::Ok();
}

Status cachegen_decode_rows(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams, int64_t row_size,
                            int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                            const SymbolTensor& symbols) {
  if (Status st = check_shape(shape, cdf_entries); !st.ok()) return st;
  if (Status st = check_symbols_out(symbols, shape); !st.ok()) return st;
  const int64_t n = shape.num_layers * shape.num_channels;
  if (row_size < 0 || streams_len != n * row_size) {
    return invalid("bytestreams: holds " + std::to_string(streams_len) + " bytes, expected layers x channels x " +
                   std::to_string(row_size));
  }
  for (int64_t k = 0; k < n; ++k) {
    if (ends[k] < 0 || ends[k] > row_size) {
      return invalid("lengths[" + std::to_string(k / shape.num_channels) + ", " + std::to_string(k % shape.num_channels) +
                     "] = " + std::to_string(ends[k]) + " is outside 0.." + std::to_string(row_size) +
                     " (the bytestreams row size); pass the lengths encode_fast_new wrote");
    }
  }
  decode_all(cdf, shape, symbols, [&](int64_t k, uint64_t* first_word) {
    const uint8_t* row = streams + k * row_size;
    // LMCache starts from the row's first 4 bytes (whatever its length), or 0 in rows under 4 bytes.
    *first_word = row_size >= 4 ? read_word(row, row_size, 0) : 0;
    return StreamBytes{row, row_size, 0, ends[k]};
  });
  return Status::Ok();
}

Status cachegen_decode_packed(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams,
                              int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                              const SymbolTensor& symbols) {
  if (Status st = check_shape(shape, cdf_entries); !st.ok()) return st;
  if (Status st = check_symbols_out(symbols, shape); !st.ok()) return st;
  const int64_t n = shape.num_layers * shape.num_channels;
  for (int64_t k = 0; k < n; ++k) {
    if (ends[k] < 0) {
      return invalid("lengths_prefsum[" + std::to_string(k) + "] = " + std::to_string(ends[k]) +
                     " is negative; pass the running sum of the encoded lengths (lengths.flatten().cumsum(0))");
    }
  }
  decode_all(cdf, shape, symbols, [&](int64_t k, uint64_t* first_word) {
    const int64_t begin = k == 0 ? 0 : ends[k - 1];
    *first_word = read_word(streams, streams_len, begin);  // past the end reads zero
    return StreamBytes{streams, streams_len, begin, ends[k]};
  });
  return Status::Ok();
}

Status rotary_embedding_k_fused(const RotaryRequest& r) {
  if (r.rot_dim < 2 || r.rot_dim % 2) {
    return invalid("cos_sin_cache: rotary dimension (shape[1]) is " + std::to_string(r.rot_dim) +
                   "; it must be even and >= 2 (cos half, sin half)");
  }
  if (r.rot_dim > r.key_last_dim) {
    return invalid("key: last dimension " + std::to_string(r.key_last_dim) + " is smaller than the rotary dimension " +
                   std::to_string(r.rot_dim) + " of cos_sin_cache");
  }
  const CodecShape shape{r.num_tokens, r.num_heads, r.key_last_dim, 0};
  if (Status st = check_strided("key", r.key_extent, shape, r.token_stride, r.head_stride, r.elem_stride); !st.ok()) {
    return st;
  }
  for (int64_t t = 0; t < r.num_tokens; ++t) {
    for (const int64_t* positions : {r.old_positions, r.new_positions}) {
      const int64_t p = positions[t];
      if (p < -r.max_position || p >= r.max_position) {
        return Status::Error(StatusCode::kOutOfRange,
                             std::string(positions == r.old_positions ? "old_positions[" : "new_positions[") +
                                 std::to_string(t) + "] = " + std::to_string(p) + " is outside the cos_sin_cache's " +
                                 std::to_string(r.max_position) + " positions; build the cache for more positions");
      }
    }
  }
  switch (r.key_kind) {
    case FloatKind::kFloat16: rotate_key<F16>(r); break;
    case FloatKind::kBFloat16: rotate_key<BF16>(r); break;
    case FloatKind::kFloat32: rotate_key<F32>(r); break;
  }
  return Status::Ok();
}

}  // namespace lmcache_ascend
