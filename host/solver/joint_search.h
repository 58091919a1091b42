// Joint replica allotment and placement for one MoE layer (or one node of a layer).
//
// The sequential inner loop of the FlashLB solver: torch prepares candidate replica counts
// for all layers at once and scores the results; this code builds a placement for one
// candidate and improves counts and placement together by local search.
#pragma once

#include <chrono>
#include <cstdint>

namespace flashlb {

struct SearchOptions {
  // Weight of the per-episode mean squared device load. It breaks ties between placements
  // with the same peaks (so the search can leave plateaus) and, with several episodes, it
  // prefers placements whose devices stay balanced in every episode, not only at the peaks.
  double smoothing = 0.05;
  // Objective cost of one slot whose expert differs from the anchor placement (in units of
  // the peak/average ratio). Zero: moves are free.
  double move_penalty = 0.0;
  // Rounds of perturbation + local search after the first local optimum (iterated local search).
  int64_t perturb_rounds = 0;
  uint64_t seed = 0;
  // Wall-clock deadline shared by all problems of one call; time_point::max() means none.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // true: build a placement from `counts`; false: start from `slots` (its own counts).
  bool build = true;
};

struct SearchResult {
  double peak_ratio;  // sum_t episode_weights[t] * max_d device_load[d][t]
  double objective;   // peak_ratio + smoothing and move terms
  int64_t moves;      // slots that differ from the anchor (up to slot order on a device)
};

// episodes T, experts N, devices D, slots_per_device S (P = D * S slots in all).
// loads:           [T * N] episode-major, each episode scaled so its device average is 1.
// episode_weights: [T] (sum 1, or all 0 for a layer without load).
// counts:          [N] replicas of each expert: read when opt.build (1 <= counts[e] <= D,
//                  sum P), ignored otherwise; always written with the result's counts.
// slots:           [P] expert of each slot: read when !opt.build (each expert on 1 to D
//                  slots); always written.
// anchor:          [P] placement in service (moves are counted against it), or nullptr.
SearchResult joint_search(int64_t T, int64_t N, int64_t D, int64_t S, const double* loads,
                          const double* episode_weights, int64_t* counts, int64_t* slots,
                          const int64_t* anchor, const SearchOptions& opt);

}  // namespace flashlb
