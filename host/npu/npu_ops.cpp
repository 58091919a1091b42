// NPU (PrivateUse1) implementations of torch.ops.flashlb.accumulate_hotness and
// episode_stats: checks on the host, the work split from flashlb/tiling.h, and the Ascend C
// kernels of kernels/ launched (kernels/launch.cpp) on the current stream of the tensors' own
// NPU. Built only where CANN is found (kernels/build_npu.sh, CMakeLists.txt); CI compiles it
// with -fsyntax-only against the ACL and torch_npu headers. Dtypes the kernels do not cover,
// and shapes whose buffers would not fit the unified buffer, take the same path in ATen ops.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "acl/acl.h"
#include "flashlb/op_checks.h"
#include "flashlb/tiling.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace flashlb {

// kernels/launch.cpp, compiled by the Ascend C toolchain with the kernels.
void launch_accumulate_hotness(void* stream, void* ids, void* row, void* out_of_range, int id_bytes,
                               bool float_counts, const HistogramTiling& t);
void launch_episode_stats(void* stream, void* steps, void* episodes, void* mean, void* var,
                          const EpisodeTiling& t, int64_t tile);

namespace {

using at::Tensor;

// Vector cores of the current device (the guard below makes it the tensors' device).
int64_t vector_cores() {
  int32_t device = 0;
  int64_t value = 0;
  if (aclrtGetDevice(&device) == ACL_SUCCESS &&
      aclGetDeviceCapability(static_cast<uint32_t>(device), ACL_DEVICE_INFO_VECTOR_CORE_NUM, &value) == ACL_SUCCESS &&
      value > 0)
    return value;
  return 8;
}

void* current_stream() { return c10_npu::getCurrentNPUStream().stream(); }

// ids [n] (int64) -> their histogram over N bins in int64, ids >= N and padding dropped.
Tensor aten_histogram(const Tensor& ids, int64_t N) {
  Tensor flat = ids.reshape(-1).to(at::kLong);
  Tensor valid = flat.ge(0).logical_and(flat.lt(N));
  Tensor counts = at::zeros({N}, flat.options());
  return counts.scatter_add_(0, flat.where(valid, at::zeros_like(flat)), valid.to(at::kLong));
}

// row += add, saturating integer rows at their type's largest value (see host/ops/hotness.cpp).
void saturating_add_(Tensor row, const Tensor& add) {
  if (row.is_floating_point()) {
    row.add_(add.to(row.scalar_type()));
    return;
  }
  const int64_t top = row.scalar_type() == at::kInt ? std::numeric_limits<int32_t>::max()
                                                    : std::numeric_limits<int64_t>::max();
  Tensor wide = row.to(at::kLong);
  // top - wide never overflows; min(add, top - wide) keeps the sum at most top.
  row.copy_(wide.add(at::minimum(add.to(at::kLong), wide.neg().add(top))));
}

// Ids >= N: refused (ValueError, nothing written) when check_ids, else dropped on every
// accelerator path, like padding. int32 rows saturate as on the CPU, so the kernel counts into
// a fresh per-call row and the add happens here; float32 rows take the atomic add directly.
void accumulate_hotness_npu(Tensor hotness, const Tensor& topk_ids, int64_t layer, bool check_ids) {
  check_accumulate_args(hotness, topk_ids, layer);
  const c10::DeviceGuard guard(hotness.device());
  const auto dt = hotness.scalar_type();
  const int64_t N = hotness.size(1);
  Tensor ids = topk_ids.contiguous();
  Tensor row = hotness.select(0, layer);
  if (ids.numel() == 0) return;
  const HistogramTiling t = histogram_tiling(ids.numel(), N, ids.element_size(), 4, vector_cores(), kUbBudget);
  if (dt == at::kLong || !histogram_fits(t, kUbBudget)) {
    // No 64-bit atomic add in the kernel, or too many experts for its unified buffer.
    if (check_ids) {
      const int64_t worst = ids.max().item<int64_t>();  // a host synchronisation: debug only
      TORCH_CHECK_VALUE(worst < N, "accumulate_hotness: topk_ids holds id ", worst,
                        ", not below the number of experts ", N);
    }
    saturating_add_(row, aten_histogram(ids, N));
    return;
  }
  const bool direct = dt == at::kFloat && !check_ids;
  Tensor counts = direct ? row : at::zeros({N}, hotness.options());
  Tensor oob = check_ids ? at::zeros({1}, hotness.options()) : Tensor();
  launch_accumulate_hotness(current_stream(), ids.data_ptr(), counts.data_ptr(),
                            check_ids ? oob.data_ptr() : nullptr, static_cast<int>(ids.element_size()),
                            dt == at::kFloat, t);
  if (check_ids) {
    const int64_t bad = oob.item().toLong();  // a host synchronisation: debug only
    TORCH_CHECK_VALUE(bad == 0, "accumulate_hotness: topk_ids holds ", bad,
                      " ids not below the number of experts ", N);
  }
  if (!direct) saturating_add_(row, counts);
}

std::tuple<Tensor, Tensor, Tensor> episode_stats_npu(const Tensor& steps, int64_t episode_len) {
  check_episode_args(steps, episode_len);
  const c10::DeviceGuard guard(steps.device());
  const auto dt = steps.scalar_type();
  const int64_t S = steps.size(0), L = steps.size(1), N = steps.size(2);
  const EpisodeTiling t = episode_tiling(S, L * N, episode_len, vector_cores());
  if (dt != at::kFloat) {  // the kernel sums float32; other dtypes take ATen ops
    const bool integer = dt == at::kInt || dt == at::kLong;
    Tensor acc = steps.to(integer ? at::kLong : dt);
    Tensor episodes;
    if (t.episodes == 1) {  // also when episode_len > S: no padding of episode_len - S rows
      episodes = acc.sum(0, /*keepdim=*/true);
    } else {
      Tensor pad = at::zeros({t.episodes * episode_len - S, L, N}, acc.options());
      episodes = at::cat({pad, acc}).view({t.episodes, episode_len, L, N}).sum(1);
    }
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
  launch_episode_stats(current_stream(), x.data_ptr(), episodes.data_ptr(), mean.data_ptr(), var.data_ptr(), t,
                       episode_tile(t, kUbBudget));
  return {episodes, mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(flashlb, PrivateUse1, m) {
  m.impl("accumulate_hotness", &accumulate_hotness_npu);
  m.impl("episode_stats", &episode_stats_npu);
}

}  // namespace flashlb
