// Host side of the kernel launches (the <<<blocks, nullptr, stream>>> form), compiled by the
// Ascend C toolchain with the kernels (CMakeLists.txt) and called by host/npu/npu_ops.cpp.
// Kept out of the kernel files so that those compile unchanged with a host compiler: against
// the Ascend C headers (kernels/check_headers.sh) and on the CPU twin (kernels/twin/).
#include "kernel_operator.h"

#include "flashlb/tiling.h"

#define FLASHLB_DECLARE_HISTOGRAM(NAME)                                                       \
  extern "C" __global__ __aicore__ void NAME(GM_ADDR ids, GM_ADDR row, GM_ADDR outOfRange,   \
                                             int64_t numIds, int64_t numExperts,              \
                                             int64_t perCore, int64_t tile, int64_t oobBin,   \
                                             int64_t histLen);
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i32_i32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i64_i32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i32_f32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i64_f32)
extern "C" __global__ __aicore__ void flashlb_episode_stats_f32(
    GM_ADDR steps, GM_ADDR episodes, GM_ADDR mean, GM_ADDR var, int64_t numSteps, int64_t columns,
    int64_t episodeLen, int64_t numEpisodes, int64_t firstLen, int64_t perCore, int64_t tile);

namespace flashlb {

// id_bytes / float_counts pick the instantiation; out_of_range may be null (not counted).
void launch_accumulate_hotness(void* stream, void* ids, void* row, void* out_of_range,
                               int id_bytes, bool float_counts, const HistogramTiling& t) {
  const uint32_t blocks = static_cast<uint32_t>(t.cores);
  auto* oob = static_cast<GM_ADDR>(out_of_range);
#define FLASHLB_LAUNCH(NAME)                                                                    \
  NAME<<<blocks, nullptr, stream>>>((GM_ADDR)ids, (GM_ADDR)row, oob, t.num_ids, t.num_experts,   \
                                    t.per_core, t.tile, t.oob_bin, t.hist_len)
  if (id_bytes == 4 && !float_counts) FLASHLB_LAUNCH(flashlb_hist_i32_i32);
  else if (id_bytes == 8 && !float_counts) FLASHLB_LAUNCH(flashlb_hist_i64_i32);
  else if (id_bytes == 4) FLASHLB_LAUNCH(flashlb_hist_i32_f32);
  else FLASHLB_LAUNCH(flashlb_hist_i64_f32);
#undef FLASHLB_LAUNCH
}

void launch_episode_stats(void* stream, void* steps, void* episodes, void* mean, void* var,
                          const EpisodeTiling& t, int64_t tile) {
  flashlb_episode_stats_f32<<<static_cast<uint32_t>(t.cores), nullptr, stream>>>(
      (GM_ADDR)steps, (GM_ADDR)episodes, (GM_ADDR)mean, (GM_ADDR)var, t.steps, t.columns,
      t.episode_len, t.episodes, t.first_len, t.per_core, tile);
}

}  // namespace flashlb
