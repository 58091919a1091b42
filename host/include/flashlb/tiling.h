// Work split shared by the Ascend C kernels (kernels/) and their host launchers (host/npu/),
// compiled and unit-tested on the CPU through torch.ops.flashlb.hotness_tiling.
//
// Plain C++ with no dependency: the AI Core compiler and the host compiler both include it.
//
// Overflow: every size is a non-negative int64. ceil_div never forms a + b - 1, so it holds
// for any a up to INT64_MAX; products are of a count by a block size (<= 32) or of values
// already bounded by a tensor's element count, which torch keeps below 2^63 / 8.
#pragma once

#include <cstdint>

namespace flashlb {

// Unified-buffer copies move whole 32-byte blocks.
constexpr int64_t kBlockBytes = 32;

// a, b >= 0, b > 0; exact for every a (no a + b - 1 that could pass INT64_MAX).
constexpr int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Unified buffer of one AI Core vector core (Atlas A2 / A3: 192 KiB), less a margin for what
// the Ascend C runtime keeps there; the launchers and the CPU twin both budget with it.
constexpr int64_t kUbCapacity = 192 * 1024;
constexpr int64_t kUbBudget = 184 * 1024;

// accumulate_hotness: the flat topk_ids [tokens * k] are cut into per-core chunks whose
// starts are 32-byte aligned; each core counts its chunk into a private histogram in the
// unified buffer (padded to whole blocks) and atomically adds it to hotness[layer].
struct HistogramTiling {
  int64_t num_ids;       // tokens * k
  int64_t num_experts;   // N
  int64_t id_bytes;      // 4 (int32) or 8 (int64)
  int64_t count_bytes;   // bytes of one hotness entry (4 or 8)
  int64_t cores;         // cores used (>= 1; 0 ids -> 1 core with nothing to do)
  int64_t per_core;      // ids per core, a whole number of blocks (last core may get fewer)
  int64_t tile;          // ids per copy into the unified buffer, a whole number of blocks
  int64_t oob_bin;       // histogram entry counting ids >= N: N rounded up to whole blocks,
                         // so that its copy out of the unified buffer starts 32-byte aligned
  int64_t hist_len;      // histogram entries: oob_bin + one block
  int64_t ub_bytes;      // unified buffer needed: one id tile + the histogram
};

// ub_capacity: usable unified-buffer bytes per core; max_cores: AI cores available.
inline HistogramTiling histogram_tiling(int64_t num_ids, int64_t num_experts, int64_t id_bytes,
                                        int64_t count_bytes, int64_t max_cores,
                                        int64_t ub_capacity) {
  HistogramTiling t{};
  t.num_ids = num_ids;
  t.num_experts = num_experts;
  t.id_bytes = id_bytes;
  t.count_bytes = count_bytes;
  const int64_t ids_per_block = kBlockBytes / id_bytes;
  t.oob_bin = round_up(num_experts, kBlockBytes / count_bytes);
  t.hist_len = t.oob_bin + kBlockBytes / count_bytes;
  const int64_t blocks = ceil_div(num_ids, ids_per_block);
  const int64_t cores = max_cores < 1 ? 1 : max_cores;
  const int64_t used = blocks < cores ? (blocks < 1 ? 1 : blocks) : cores;
  t.per_core = ceil_div(blocks, used) * ids_per_block;
  t.cores = num_ids == 0 ? 1 : ceil_div(num_ids, t.per_core);
  // The id tile takes what the histogram leaves of the unified buffer, in whole blocks.
  const int64_t hist_bytes = t.hist_len * count_bytes;
  int64_t room = (ub_capacity - hist_bytes) / kBlockBytes * kBlockBytes / id_bytes;
  if (room < ids_per_block) room = ids_per_block;
  t.tile = room < t.per_core ? room : t.per_core;
  t.tile = round_up(t.tile, ids_per_block);
  t.ub_bytes = hist_bytes + t.tile * id_bytes;
  return t;
}

// Whether the kernel's buffers fit `ub_capacity` bytes; the launcher takes the ATen path when not.
inline bool histogram_fits(const HistogramTiling& t, int64_t ub_capacity) {
  return t.ub_bytes <= ub_capacity;
}

// Chunk of core c: ids [begin, end).
inline void histogram_chunk(const HistogramTiling& t, int64_t core, int64_t* begin, int64_t* end) {
  int64_t b = core * t.per_core;
  int64_t e = b + t.per_core;
  if (b > t.num_ids) b = t.num_ids;
  if (e > t.num_ids) e = t.num_ids;
  *begin = b;
  *end = e;
}

// episode_stats: steps [S, L*N] are reduced over episodes of E steps. Columns (L*N) are cut
// into per-core ranges of whole blocks; the oldest episode takes the S % E leftover steps,
// so no step is dropped and the newest episodes stay aligned with the window's end.
struct EpisodeTiling {
  int64_t steps, columns, episode_len, episodes;
  int64_t first_len;     // steps in episode 0 (S % E, or E when E divides S)
  int64_t cores, per_core;  // columns per core, a whole number of 32-byte blocks of float
};

inline EpisodeTiling episode_tiling(int64_t steps, int64_t columns, int64_t episode_len,
                                    int64_t max_cores) {
  EpisodeTiling t{};
  t.steps = steps;
  t.columns = columns;
  t.episode_len = episode_len;
  t.episodes = ceil_div(steps, episode_len);
  t.first_len = steps - (t.episodes - 1) * episode_len;
  const int64_t per_block = kBlockBytes / 4;
  const int64_t blocks = ceil_div(columns, per_block);
  const int64_t cores = max_cores < 1 ? 1 : max_cores;
  const int64_t used = blocks < cores ? (blocks < 1 ? 1 : blocks) : cores;
  t.per_core = ceil_div(blocks, used) * per_block;
  t.cores = columns == 0 ? 1 : ceil_div(columns, t.per_core);
  return t;
}

// Columns per unified-buffer tile of the episode kernel: three float buffers (row, sum,
// squares) in whole 32-byte blocks, no more than one core's share.
inline int64_t episode_tile(const EpisodeTiling& t, int64_t ub_capacity) {
  const int64_t per_block = kBlockBytes / 4;
  int64_t tile = (ub_capacity / 3) / kBlockBytes * per_block;
  if (tile < per_block) tile = per_block;
  return tile < t.per_core ? tile : t.per_core;
}

// Steps [begin, end) of episode i.
inline void episode_steps(const EpisodeTiling& t, int64_t i, int64_t* begin, int64_t* end) {
  *begin = i == 0 ? 0 : t.first_len + (i - 1) * t.episode_len;
  *end = i == 0 ? t.first_len : *begin + t.episode_len;
}

}  // namespace flashlb
