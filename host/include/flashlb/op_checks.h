// Argument checks of the hotness operators, shared by every back end written in C++ (the CPU
// kernels in host/ops, the NPU launchers in host/npu) so they reject the same inputs with the
// same messages. Each check runs on the host and costs no device synchronisation.
#pragma once

#include <ATen/ATen.h>

namespace flashlb {

inline void check_accumulate_args(const at::Tensor& hotness, const at::Tensor& topk_ids, int64_t layer) {
  TORCH_CHECK_VALUE(hotness.dim() == 2, "accumulate_hotness: hotness must be [L, N], got ", hotness.sizes());
  TORCH_CHECK_VALUE(topk_ids.dim() == 1 || topk_ids.dim() == 2,
                    "accumulate_hotness: topk_ids must be [tokens, k], got ", topk_ids.sizes());
  TORCH_CHECK_VALUE(hotness.device() == topk_ids.device(), "accumulate_hotness: hotness is on ",
                    hotness.device(), " but topk_ids on ", topk_ids.device());
  const auto dt = hotness.scalar_type(), it = topk_ids.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kInt || dt == at::kLong || dt == at::kFloat,
                    "accumulate_hotness: hotness must be int32, int64 or float32, got ", dt);
  TORCH_CHECK_VALUE(it == at::kInt || it == at::kLong,
                    "accumulate_hotness: topk_ids must be int32 or int64, got ", it);
  TORCH_CHECK_VALUE(hotness.is_contiguous(), "accumulate_hotness: hotness must be contiguous");
  TORCH_CHECK_VALUE(topk_ids.numel() < (int64_t{1} << 32), "accumulate_hotness: at most 2^32 - 1 ids per call");
  TORCH_CHECK_INDEX(layer >= 0 && layer < hotness.size(0), "accumulate_hotness: layer ", layer,
                    " is outside [0, ", hotness.size(0), ")");
}

inline void check_episode_args(const at::Tensor& steps, int64_t episode_len) {
  TORCH_CHECK_VALUE(steps.dim() == 3, "episode_stats: steps must be [S, L, N], got ", steps.sizes());
  TORCH_CHECK_VALUE(episode_len >= 1, "episode_stats: episode_len must be >= 1, got ", episode_len);
  TORCH_CHECK_VALUE(steps.size(0) >= 1, "episode_stats: steps must hold at least one step");
  const auto dt = steps.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kInt || dt == at::kLong || dt == at::kFloat || dt == at::kDouble,
                    "episode_stats: steps must be int32, int64, float32 or float64, got ", dt);
}

}  // namespace flashlb
