// C entry points of the CPU twin (a shared library loaded by tests/test_kernels_cpu_twin.py):
// the same work split and launch as host/npu/npu_ops.cpp and kernels/launch.cpp, with the
// kernels of kernels/*.cpp compiled unchanged against kernels/twin/kernel_operator.h.
#include <cstdio>
#include <string>

#include "kernel_operator.h"

extern "C" {
#define FLASHLB_DECLARE_HISTOGRAM(NAME)                                                    \
  void NAME(GM_ADDR ids, GM_ADDR row, GM_ADDR outOfRange, int64_t numIds, int64_t numExperts, \
            int64_t perCore, int64_t tile, int64_t oobBin, int64_t histLen);
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i32_i32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i64_i32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i32_f32)
FLASHLB_DECLARE_HISTOGRAM(flashlb_hist_i64_f32)
void flashlb_episode_stats_f32(GM_ADDR steps, GM_ADDR episodes, GM_ADDR mean, GM_ADDR var, int64_t numSteps,
                               int64_t columns, int64_t episodeLen, int64_t numEpisodes, int64_t firstLen,
                               int64_t perCore, int64_t tile);

static int report(const std::string& fault, char* err, int err_len) {
  if (fault.empty()) return 0;
  std::snprintf(err, static_cast<size_t>(err_len), "%s", fault.c_str());
  return 1;
}

// row [N] of int32 (float_counts 0) or float32 counts += histogram of ids; out_of_range (one
// count, or null) += ids >= N. Returns 0, 1 with the twin's fault in err, or 2 when the tiling
// does not fit ub_budget (the launcher would take the ATen path) and launch_anyway is 0.
int twin_accumulate_hotness(void* ids, int id_bytes, void* row, int float_counts, void* out_of_range,
                            int64_t num_ids, int64_t num_experts, int64_t max_cores, int64_t ub_budget,
                            int launch_anyway, char* err, int err_len) {
  const flashlb::HistogramTiling t =
      flashlb::histogram_tiling(num_ids, num_experts, id_bytes, 4, max_cores, ub_budget);
  if (!flashlb::histogram_fits(t, ub_budget) && !launch_anyway) return 2;
  if (num_ids == 0) return 0;
  auto kernel = id_bytes == 4 ? (float_counts ? flashlb_hist_i32_f32 : flashlb_hist_i32_i32)
                              : (float_counts ? flashlb_hist_i64_f32 : flashlb_hist_i64_i32);
  return report(flashlb::twin::launch(t.cores, [&] {
                  kernel(static_cast<GM_ADDR>(ids), static_cast<GM_ADDR>(row), static_cast<GM_ADDR>(out_of_range),
                         t.num_ids, t.num_experts, t.per_core, t.tile, t.oob_bin, t.hist_len);
                }),
                err, err_len);
}

// steps [S, C] float32 -> episodes [T, C], mean [C], var [C].
int twin_episode_stats(float* steps, float* episodes, float* mean, float* var, int64_t num_steps, int64_t columns,
                       int64_t episode_len, int64_t max_cores, int64_t ub_budget, char* err, int err_len) {
  const flashlb::EpisodeTiling t = flashlb::episode_tiling(num_steps, columns, episode_len, max_cores);
  const int64_t tile = flashlb::episode_tile(t, ub_budget);
  return report(flashlb::twin::launch(t.cores, [&] {
                  flashlb_episode_stats_f32(reinterpret_cast<GM_ADDR>(steps), reinterpret_cast<GM_ADDR>(episodes),
                                            reinterpret_cast<GM_ADDR>(mean), reinterpret_cast<GM_ADDR>(var),
                                            t.steps, t.columns, t.episode_len, t.episodes, t.first_len,
                                            t.per_core, tile);
                }),
                err, err_len);
}
}
