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
  // true: build a placement from `counts`; false: start from `slots` (and its counts).
  bool build = true;
};

struct SearchResult {
  double peak_ratio;  // sum_t ew[t] * max_d load[d][t]
  double objective;   // peak_ratio + smoothing and move terms
  int64_t moves;      // slots that differ from the anchor (up to slot order on a device)
};

// T episodes, N experts, D devices, S slots per device (P = D * S).
// w:      [T * N] episode-major loads, each episode scaled so that its device average is 1.
// ew:     [T] episode weights (sum 1, or all 0 for a layer without load).
// counts: [N] replica counts: input when build, always output. 1 <= counts[e] <= D, sum P.
// slots:  [P] expert of each physical slot: input when !build, always output.
// anchor: [P] placement currently in service, or nullptr.
SearchResult joint_search(int64_t T, int64_t N, int64_t D, int64_t S, const double* w,
                          const double* ew, int64_t* counts, int64_t* slots,
                          const int64_t* anchor, const SearchOptions& opt);

}  // namespace flashlb
