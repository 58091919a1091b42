// NPU (PrivateUse1) implementations of torch.ops.flashlb.accumulate_hotness and
// episode_stats: checks on the host, the work split from flashlb/tiling.h, and the Ascend C
// kernels of kernels/ launched on the current NPU stream. Built only where CANN is found
// (kernels/build_npu.sh, CMakeLists.txt); CI compiles it with -fsyntax-only against the ACL
// and torch_npu headers. Dtypes the kernels do not cover take the same path in ATen ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <tuple>

#include "acl/acl.h"
#include "flashlb/op_checks.h"
#include "flashlb/tiling.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace flashlb {

// Defined with the kernels (kernels/*.cpp), compiled by the Ascend C toolchain.
void launch_accumulate_hotness(void* stream, void* ids, void* row, int id_bytes, bool float_counts,
                               const HistogramTiling& t);
void launch_episode_stats(void* stream, void* steps, void* episodes, void* mean, void* var,
                          const EpisodeTiling& t, int64_t tile);

namespace {

using at::Tensor;

// Unified buffer per vector core usable by one kernel (192 KiB on Atlas A2, less a margin).
constexpr int64_t kUbBytes = 184 * 1024;

int64_t vector_cores() {
  static int64_t cores = [] {
    int32_t device = 0;
    int64_t value = 0;
    if (aclrtGetDevice(&device) == ACL_SUCCESS &&
        aclGetDeviceCapability(static_cast<uint32_t>(device), ACL_DEVICE_INFO_VECTOR_CORE_NUM, &value) == ACL_SUCCESS &&
        value > 0)
      return value;
    return static_cast<int64_t>(8);
  }();
  return cores;
}

bool debug_checks() {
  const char* v = std::getenv("FLASHLB_DEBUG_CHECKS");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

void accumulate_hotness_npu(Tensor hotness, const Tensor& topk_ids, int64_t layer) {
  check_accumulate_args(hotness, topk_ids, layer);
  const auto dt = hotness.scalar_type();
  const int64_t N = hotness.size(1);
  Tensor ids = topk_ids.contiguous();
  if (debug_checks() && ids.numel() > 0) {  // a host synchronisation: debug only
    const int64_t worst = ids.max().item<int64_t>();
    TORCH_CHECK_VALUE(worst < N, "accumulate_hotness: topk_ids holds id ", worst,
                      ", not below the number of experts ", N);
  }
  Tensor row = hotness.select(0, layer);
  if (dt == at::kLong) {  // no 64-bit atomic add in the kernel: the same sum in ATen ops
    Tensor flat = ids.reshape(-1).to(at::kLong);
    row.scatter_add_(0, flat.clamp_min(0), flat.ge(0).to(at::kLong));
    return;
  }
  HistogramTiling t = histogram_tiling(ids.numel(), N, ids.element_size(), hotness.element_size(),
                                       vector_cores(), kUbBytes);
  if (ids.numel() == 0) return;
  launch_accumulate_hotness(c10_npu::getCurrentNPUStream().stream(), ids.data_ptr(), row.data_ptr(),
                            static_cast<int>(ids.element_size()), dt == at::kFloat, t);
}

std::tuple<Tensor, Tensor, Tensor> episode_stats_npu(const Tensor& steps, int64_t episode_len) {
  check_episode_args(steps, episode_len);
  const auto dt = steps.scalar_type();
  const int64_t S = steps.size(0), L = steps.size(1), N = steps.size(2);
  EpisodeTiling t = episode_tiling(S, L * N, episode_len, vector_cores());
  if (dt != at::kFloat) {  // the kernel sums float32; other dtypes take ATen ops
    const bool integer = dt == at::kInt || dt == at::kLong;
    Tensor acc = steps.to(integer ? at::kLong : dt);
    Tensor pad = at::zeros({t.episodes * episode_len - S, L, N}, acc.options());
    Tensor episodes = at::cat({pad, acc}).view({t.episodes, episode_len, L, N}).sum(1);
    Tensor full = episodes.to(at::kDouble);
    full.select(0, 0).mul_(static_cast<double>(episode_len) / static_cast<double>(t.first_len));
    Tensor mean = full.mean(0);
    Tensor var = (full - mean).square().mean(0);
    const auto st = dt == at::kDouble ? at::kDouble : at::kFloat;
    return {episodes, mean.to(st), var.to(st)};
  }
  Tensor x = steps.contiguous();
  Tensor episodes = at::empty({t.episodes, L, N}, x.options());
  Tensor mean = at::empty({L, N}, x.options());
  Tensor var = at::empty({L, N}, x.options());
  // Three float buffers per tile (row, sum, squares), in whole 32-byte blocks.
  int64_t tile = (kUbBytes / 3) / kBlockBytes * kBlockBytes / 4;
  if (tile > t.per_core) tile = t.per_core;
  launch_episode_stats(c10_npu::getCurrentNPUStream().stream(), x.data_ptr(), episodes.data_ptr(),
                       mean.data_ptr(), var.data_ptr(), t, tile);
  return {episodes, mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashlb, PrivateUse1, m) {
  m.impl("accumulate_hotness", &accumulate_hotness_npu);
  m.impl("episode_stats", &episode_stats_npu);
}

}  // namespace flashlb
