// CPU backend of the KV transfer kernel family. The reference every other backend is checked
// against, and the production path for engines whose KV cache lives in host memory.
#include "lmcache_ascend/transfer.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "lmcache_ascend/thread_pool.hpp"
#include "lmcache_ascend/transfer_validation.hpp"

#if defined(__x86_64__)
#include <emmintrin.h>  // SSE2, part of the x86-64 baseline: no CPU check needed
#define LMCACHE_ASCEND_STREAM_STORES 1
#endif

namespace lmcache_ascend {
namespace {

// Consecutive tokens of one chunk whose slots are consecutive inside one block.
struct Run {
  int64_t chunk;
  int64_t chunk_token;  // first token's position inside its chunk
  int64_t slot;         // first token's slot
  int64_t length;
};

Status invalid(const std::string& msg) { return Status::Error(StatusCode::kInvalidArgument, msg); }

// Sum of count_i * stride_i + tail in int64; false on overflow. Shapes and strides come from Python
// unchecked, so a wrapped product must not pass for a small one.
bool extent_fits(std::initializer_list<std::pair<int64_t, int64_t>> terms, int64_t tail, int64_t* out) {
  int64_t total = tail;
  for (const auto& term : terms) {
    int64_t product = 0;
    if (__builtin_mul_overflow(term.first, term.second, &product) || __builtin_add_overflow(total, product, &total))
      return false;
  }
  *out = total;
  return true;
}

Status too_large(const std::string& field, const std::string& detail) {
  return Status::Error(StatusCode::kOutOfRange, field + " is too large: " + detail +
                                                    " overflows a 64-bit offset; check the tensor's shape and strides");
}

Status check_layout(const TransferRequest& r) {
  const PageLayout& p = r.page;
  if (p.elem_size != 1 && p.elem_size != 2 && p.elem_size != 4)
    return invalid("element size " + std::to_string(p.elem_size) +
                   " bytes is not supported; use a 1-, 2- or 4-byte dtype (int8, fp16, bf16, fp32)");
  if (p.num_layers < 1) return invalid("num_layers must be >= 1, got " + std::to_string(p.num_layers));
  if (p.num_planes != 1 && p.num_planes != 2)
    return invalid("num_planes must be 1 (MLA) or 2 (K and V), got " + std::to_string(p.num_planes));
  if (p.plane_bases == nullptr) return invalid("plane_bases is null: pass one base address per layer and plane");
  for (int64_t i = 0; i < static_cast<int64_t>(p.num_layers) * p.num_planes; ++i)
    if (p.plane_bases[i] == 0)
      return invalid("plane base address " + std::to_string(i) + " is null: every layer needs a KV buffer");
  if (p.num_blocks < 1 || p.block_size < 1 || p.num_heads < 1 || p.head_size < 1)
    return invalid("paged KV cache dimensions must be positive, got num_blocks=" + std::to_string(p.num_blocks) +
                   " block_size=" + std::to_string(p.block_size) + " num_heads=" + std::to_string(p.num_heads) +
                   " head_size=" + std::to_string(p.head_size));
  if (p.block_stride < 0 || p.head_stride < 0 || p.token_stride < 0)
    return invalid("paged KV cache strides must be non-negative");
  int64_t num_slots = 0;
  if (__builtin_mul_overflow(p.num_blocks, static_cast<int64_t>(p.block_size), &num_slots))
    return too_large("num_blocks", "num_blocks=" + std::to_string(p.num_blocks) + " x block_size=" +
                                       std::to_string(p.block_size));
  int64_t page_last = 0;
  if (!extent_fits({{p.num_blocks - 1, p.block_stride}, {p.block_size - 1, p.token_stride}, {p.num_heads - 1, p.head_stride}},
                   p.head_size, &page_last))
    return too_large("paged KV cache layout", "block_stride=" + std::to_string(p.block_stride) + " token_stride=" +
                                                  std::to_string(p.token_stride) + " head_stride=" +
                                                  std::to_string(p.head_stride) + " over " + std::to_string(p.num_blocks) +
                                                  " blocks");
  if (page_last > r.page_extent_elems)
    return Status::Error(StatusCode::kOutOfRange,
                         "paged KV cache layout reaches element " + std::to_string(page_last) +
                             " but each plane only holds " + std::to_string(r.page_extent_elems) +
                             " elements: the shape or strides do not match the buffer");
  if (r.slots.index_bytes != 4 && r.slots.index_bytes != 8)
    return invalid("slot_mapping must be int32 or int64, got " + std::to_string(r.slots.index_bytes) +
                   "-byte integers");
  if (r.slots.length > 0 && r.slots.data == nullptr) return invalid("slot_mapping data is null");
  if (r.num_chunks < 0 || (r.num_chunks > 0 && (r.chunks == nullptr || r.chunk_extent_bytes == nullptr)))
    return invalid("chunk list is empty or null");
  if (r.skip_prefix_n_tokens < 0)
    return invalid("skip_prefix_n_tokens must be >= 0, got " + std::to_string(r.skip_prefix_n_tokens));
  return Status::Ok();
}

Status check_chunks(const TransferRequest& r) {
  const PageLayout& p = r.page;
  for (int64_t i = 0; i < r.num_chunks; ++i) {
    const ChunkRef& ch = r.chunks[i];
    std::string which = "chunk " + std::to_string(i);
    if (ch.token_begin < 0 || ch.token_end < ch.token_begin || ch.token_end > r.slots.length)
      return Status::Error(StatusCode::kOutOfRange,
                           which + " covers tokens [" + std::to_string(ch.token_begin) + ", " +
                               std::to_string(ch.token_end) + ") but slot_mapping has " +
                               std::to_string(r.slots.length) + " tokens");
    if (ch.token_end == ch.token_begin) continue;
    if (ch.base == 0) return invalid(which + " has a null base address");
    const ChunkStrides& c = ch.strides;
    if (c.plane_stride < 0 || c.layer_stride < 0 || c.token_stride < 0)
      return invalid(which + ": LMCache chunk strides must be non-negative");
    int64_t needed = 0;
    Status st = chunk_bytes_touched(r, i, &needed);
    if (!st.ok()) return st;
    if (needed > r.chunk_extent_bytes[i])
      return Status::Error(StatusCode::kOutOfRange,
                           which + " needs " + std::to_string(needed) + " bytes for " +
                               std::to_string(ch.token_end - ch.token_begin) + " tokens x " +
                               std::to_string(p.num_layers) + " layers but its buffer holds " +
                               std::to_string(r.chunk_extent_bytes[i]) +
                               " bytes: allocate it with the full [planes, layers, tokens, hidden] shape");
  }
  return Status::Ok();
}

// Layout, extents and chunk table: everything but the slots.
Status check_descriptor(const TransferRequest& r) {
  Status st = check_layout(r);
  return st.ok() ? check_chunks(r) : st;
}

Status slot_out_of_range(const TransferRequest& r, int64_t t, int64_t slot) {
  const int64_t num_slots = r.page.num_slots();
  return Status::Error(StatusCode::kOutOfRange,
                       "slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slot) +
                           " is out of range: the paged KV cache has " + std::to_string(num_slots) + " slots (" +
                           std::to_string(r.page.num_blocks) + " blocks x " + std::to_string(r.page.block_size) +
                           "); slots must be < " + std::to_string(num_slots) + ", or negative to skip a token");
}

// Validates every slot that will move, then splits them into runs. Nothing moves before this
// returns OK.
Status plan_runs(const TransferRequest& r, std::vector<Run>& runs) {
  const int64_t num_slots = r.page.num_slots();
  const int64_t block = r.page.block_size;
  for (int64_t c = 0; c < r.num_chunks; ++c) {
    const ChunkRef& ch = r.chunks[c];
    int64_t t = std::max(ch.token_begin, r.skip_prefix_n_tokens);
    Run cur{c, 0, -1, 0};
    for (; t < ch.token_end; ++t) {
      int64_t slot = r.slots.at(t);
      if (slot >= num_slots) return slot_out_of_range(r, t, slot);
      if (slot < 0) {  // padding / not-yet-allocated token: skipped
        if (cur.length) runs.push_back(cur), cur.length = 0;
        continue;
      }
      bool extends = cur.length && slot == cur.slot + cur.length && slot % block != 0;
      if (!extends) {
        if (cur.length) runs.push_back(cur);
        cur = Run{c, t - ch.token_begin, slot, 0};
      }
      ++cur.length;
    }
    if (cur.length) runs.push_back(cur);
  }
  return Status::Ok();
}

// Large transfers write with non-temporal stores: they skip the read-for-ownership of every
// destination line, and on the head-major vLLM CPU layout, whose 512-byte rows defeat the hardware's
// write combining, measured 1.3-1.6x faster (benchmarks/bench_transfer.py). Whose data is read soon
// decides where they are used:
//  - gathers fill an LMCache object nothing here reads back: streamed from this size up; below it
//    the object fits in the caches, and whoever serializes it next reads it from there;
//  - scatters of several layers (whole-chunk retrieve) also stream: by the time attention reads
//    layer 0 again, the later layers have pushed it out of the caches anyway;
//  - single-layer scatters (layerwise retrieve) do not: that layer's attention runs right after.
constexpr int64_t kStreamStoreMinBytes = 4 << 20;

// memcpy with non-temporal stores where the destination is 16-byte aligned; plain memcpy elsewhere
// and on other architectures. The caller fences (stream_fence) before the data is handed over.
inline void stream_copy(char* dst, const char* src, size_t n) {
#ifdef LMCACHE_ASCEND_STREAM_STORES
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
      __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
      __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    for (; i + 16 <= n; i += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    if (i < n) std::memcpy(dst + i, src + i, n - i);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

// Non-temporal stores are weakly ordered: each thread fences its own before the pool reports done.
inline void stream_fence() {
#ifdef LMCACHE_ASCEND_STREAM_STORES
  _mm_sfence();
#endif
}

template <bool kStream>
inline void copy_bytes(char* dst, const char* src, size_t n) {
  if constexpr (kStream)
    stream_copy(dst, src, n);
  else
    std::memcpy(dst, src, n);
}

// Moves one run of one plane of one layer; kStream: with non-temporal stores (see above).
template <bool kStream>
void copy_run(const TransferRequest& r, const Run& run, int layer, int plane) {
  const PageLayout& p = r.page;
  const size_t es = static_cast<size_t>(p.elem_size);
  char* page = reinterpret_cast<char*>(p.plane_bases[layer * p.num_planes + plane]);
  int64_t block_id = run.slot / p.block_size, in_block = run.slot % p.block_size;
  page += (block_id * p.block_stride + in_block * p.token_stride) * es;
  const ChunkStrides& cs_el = r.chunks[run.chunk].strides;
  char* chunk = reinterpret_cast<char*>(r.chunks[run.chunk].base) +
                (plane * cs_el.plane_stride + layer * cs_el.layer_stride + run.chunk_token * cs_el.token_stride) * es;
  const bool gather = r.direction == Direction::kPagedToChunk;
  const int64_t hidden = p.hidden();

  if (p.token_row_contiguous()) {
    const size_t row = static_cast<size_t>(hidden) * es;
    if (p.token_stride == hidden && cs_el.token_stride == hidden) {  // the whole run is one block of bytes
      size_t bytes = row * static_cast<size_t>(run.length);
      gather ? copy_bytes<kStream>(chunk, page, bytes) : copy_bytes<kStream>(page, chunk, bytes);
      return;
    }
    const size_t ps = p.token_stride * es, cs = cs_el.token_stride * es;
    for (int64_t t = 0; t < run.length; ++t, page += ps, chunk += cs)
      gather ? copy_bytes<kStream>(chunk, page, row) : copy_bytes<kStream>(page, chunk, row);
    return;
  }
  // Heads are not adjacent within a token (HND-like layouts): one head_dim row at a time. The inner
  // loop runs over the shorter of heads and tokens, so at most that many address streams are live
  // at once (a long run walked head by head would keep one write stream per token open).
  const size_t head_bytes = static_cast<size_t>(p.head_size) * es;
  const size_t hs = p.head_stride * es, ps = p.token_stride * es, cs = cs_el.token_stride * es;
  const bool heads_inner = run.length > p.num_heads;
  auto rows = [&](auto copy_row) {
    const int64_t outer_n = heads_inner ? run.length : p.num_heads, inner_n = heads_inner ? p.num_heads : run.length;
    const size_t page_outer = heads_inner ? ps : hs, page_inner = heads_inner ? hs : ps;
    const size_t chunk_outer = heads_inner ? cs : head_bytes, chunk_inner = heads_inner ? head_bytes : cs;
    for (int64_t o = 0; o < outer_n; ++o, page += page_outer, chunk += chunk_outer) {
      char* pg = page;
      char* ck = chunk;
      for (int64_t i = 0; i < inner_n; ++i, pg += page_inner, ck += chunk_inner)
        gather ? copy_row(ck, pg) : copy_row(pg, ck);
    }
  };
  // Rows are short (a head_dim of 64-256 elements): for the common sizes the compiler inlines a
  // fixed-size copy, which costs less than a call to memcpy for 128-512 bytes.
  switch (head_bytes) {
    case 128: rows([](char* d, const char* s) { copy_bytes<kStream>(d, s, 128); }); break;
    case 256: rows([](char* d, const char* s) { copy_bytes<kStream>(d, s, 256); }); break;
    case 512: rows([](char* d, const char* s) { copy_bytes<kStream>(d, s, 512); }); break;
    default: rows([head_bytes](char* d, const char* s) { copy_bytes<kStream>(d, s, head_bytes); });
  }
}

}  // namespace

Status chunk_bytes_touched(const TransferRequest& r, int64_t c, int64_t* bytes) {
  const PageLayout& p = r.page;
  const ChunkRef& ch = r.chunks[c];
  const int64_t ntok = ch.token_end - ch.token_begin;
  *bytes = 0;
  if (ntok <= 0) return Status::Ok();
  const ChunkStrides& s = ch.strides;
  int64_t last = 0;
  if (!extent_fits({{p.num_planes - 1, s.plane_stride}, {p.num_layers - 1, s.layer_stride}, {ntok - 1, s.token_stride}},
                   p.hidden(), &last) ||
      __builtin_mul_overflow(last, static_cast<int64_t>(p.elem_size), bytes))
    return too_large("chunk " + std::to_string(c),
                     "plane_stride=" + std::to_string(s.plane_stride) + " layer_stride=" + std::to_string(s.layer_stride) +
                         " token_stride=" + std::to_string(s.token_stride) + " over " + std::to_string(ntok) + " tokens");
  return Status::Ok();
}

Status validate_transfer_request(const TransferRequest& r) {
  Status st = check_descriptor(r);
  if (!st.ok()) return st;
  const int64_t num_slots = r.page.num_slots();
  for (int64_t c = 0; c < r.num_chunks; ++c)
    for (int64_t t = std::max(r.chunks[c].token_begin, r.skip_prefix_n_tokens); t < r.chunks[c].token_end; ++t) {
      int64_t slot = r.slots.at(t);
      if (slot >= num_slots) return slot_out_of_range(r, t, slot);
    }
  return Status::Ok();
}

Status transfer_kv(const TransferRequest& r) {
  Status st = check_descriptor(r);
  if (!st.ok()) return st;
  std::vector<Run> runs;
  runs.reserve(static_cast<size_t>(std::min<int64_t>(r.slots.length, 1 << 16)));
  st = plan_runs(r, runs);
  if (!st.ok()) return st;
  if (runs.empty()) return Status::Ok();

  // Work item = (layer, plane, run). Items of one layer and plane are adjacent, so a thread's
  // range walks memory in order.
  const int64_t nruns = static_cast<int64_t>(runs.size());
  const int64_t planes = r.page.num_planes;
  const int64_t items = static_cast<int64_t>(r.page.num_layers) * planes * nruns;
  int64_t tokens = 0;
  for (const Run& run : runs) tokens += run.length;
  // Aim for >= 256 KiB per range so waking a thread pays for itself.
  const int64_t bytes_per_item = std::max<int64_t>(1, tokens * r.page.hidden() * r.page.elem_size / nruns);
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / bytes_per_item);
  const bool stream = (r.direction == Direction::kPagedToChunk || r.page.num_layers > 1) &&
                      tokens * r.page.hidden() * r.page.elem_size * r.page.num_layers * planes >= kStreamStoreMinBytes;
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t lp = i / nruns;
      const Run& run = runs[static_cast<size_t>(i % nruns)];
      const int layer = static_cast<int>(lp / planes), plane = static_cast<int>(lp % planes);
      stream ? copy_run<true>(r, run, layer, plane) : copy_run<false>(r, run, layer, plane);
    }
    if (stream) stream_fence();
  });
  return Status::Ok();
}

}  // namespace lmcache_ascend
