// torch.ops.flashlb hotness operators: schemas and CPU kernels (the reference the NPU
// kernels in kernels/ must equal). Plain-torch versions for other devices are registered
// from Python (flashlb/ops/__init__.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <tuple>
#include <vector>

#include "flashlb/op_checks.h"
#include "flashlb/tiling.h"

namespace flashlb {
namespace {

using at::Tensor;

// Counts ids [b, e) into `lanes` interleaved histograms of N + 1 bins (bin N collects
// padding and out-of-range ids), so that consecutive equal ids do not wait on one another's
// increment; returns the largest id seen.
constexpr int64_t kLanes = 8;

template <typename id_t>
int64_t count_range(const id_t* ids, int64_t b, int64_t e, uint32_t* h, int64_t N) {
  constexpr int64_t lanes = kLanes;
  const int64_t width = N + 1;
  int64_t worst = -1;
  int64_t i = b;
  for (; i + lanes <= e; i += lanes) {
    for (int64_t k = 0; k < lanes; ++k) {
      const int64_t v = static_cast<int64_t>(ids[i + k]);
      worst = v > worst ? v : worst;
      h[k * width + (static_cast<uint64_t>(v) < static_cast<uint64_t>(N) ? v : N)] += 1;
    }
  }
  for (; i < e; ++i) {
    const int64_t v = static_cast<int64_t>(ids[i]);
    worst = v > worst ? v : worst;
    h[static_cast<uint64_t>(v) < static_cast<uint64_t>(N) ? v : N] += 1;
  }
  return worst;
}

// row + total, saturating at the largest value of an integer count type (int32 hotness would
// otherwise wrap at 2^31 and read as negative load); float counts just add.
template <typename count_t>
count_t saturating_add(count_t row, int64_t total) {
  if constexpr (std::is_integral_v<count_t>) {
    constexpr int64_t top = static_cast<int64_t>(std::numeric_limits<count_t>::max());
    const int64_t have = static_cast<int64_t>(row);
    return static_cast<count_t>(have > top - total ? top : have + total);
  } else {
    return row + static_cast<count_t>(total);
  }
}

// Histogram of ids into a private buffer first (one pass; split over threads for large
// batches), then, only if every id is below N, added to the row: a bad batch writes nothing.
template <typename id_t, typename count_t>
void count_ids(const id_t* ids, int64_t n, count_t* row, int64_t N) {
  constexpr int64_t lanes = kLanes;
  const int64_t width = N + 1;
  // Threads pay off only for large batches; 32-bit lane counters hold up to 2^32 - 1 ids each.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), 8, n >> 18}));
  std::vector<uint32_t> part(chunks * lanes * width, 0);
  std::vector<int64_t> worst(chunks, -1);
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c)
      worst[c] = count_range(ids, n * c / chunks, n * (c + 1) / chunks, part.data() + c * lanes * width, N);
  });
  const int64_t bad = *std::max_element(worst.begin(), worst.end());
  TORCH_CHECK_VALUE(bad < N, "accumulate_hotness: topk_ids holds id ", bad,
                    ", not below the number of experts ", N);
  for (int64_t e = 0; e < N; ++e) {
    int64_t total = 0;
    for (int64_t k = 0; k < chunks * lanes; ++k) total += static_cast<int64_t>(part[k * width + e]);
    row[e] = saturating_add(row[e], total);
  }
}

// check_ids: ids >= N are always refused on the CPU (the check is free here).
void accumulate_hotness_cpu(Tensor hotness, const Tensor& topk_ids, int64_t layer, bool /*check_ids*/) {
  check_accumulate_args(hotness, topk_ids, layer);
  const auto dt = hotness.scalar_type(), it = topk_ids.scalar_type();
  const int64_t N = hotness.size(1);
  Tensor ids = topk_ids.contiguous();
  const int64_t n = ids.numel();
  AT_DISPATCH_INDEX_TYPES(it, "accumulate_hotness_ids", [&] {
    const index_t* ip = ids.data_ptr<index_t>();
    if (dt == at::kInt) count_ids(ip, n, hotness.data_ptr<int32_t>() + layer * N, N);
    else if (dt == at::kLong) count_ids(ip, n, hotness.data_ptr<int64_t>() + layer * N, N);
    else count_ids(ip, n, hotness.data_ptr<float>() + layer * N, N);
  });
}

template <typename in_t, typename acc_t>
void episode_sums(const in_t* x, acc_t* out, const EpisodeTiling& t) {
  at::parallel_for(0, t.columns, 2048, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < t.episodes; ++i) {
      int64_t b, e;
      episode_steps(t, i, &b, &e);
      acc_t* o = out + i * t.columns;
      for (int64_t c = c0; c < c1; ++c) o[c] = 0;
      for (int64_t s = b; s < e; ++s) {
        const in_t* row = x + s * t.columns;
        for (int64_t c = c0; c < c1; ++c) o[c] += static_cast<acc_t>(row[c]);
      }
    }
  });
}

// steps [S, L, N] -> episodes [ceil(S / E), L, N] (sums; int64 for integer input, the input's
// float type otherwise), mean and var [L, N] over episodes of the sums scaled to E steps.
std::tuple<Tensor, Tensor, Tensor> episode_stats_cpu(const Tensor& steps, int64_t episode_len) {
  check_episode_args(steps, episode_len);
  const auto dt = steps.scalar_type();
  const int64_t S = steps.size(0), L = steps.size(1), N = steps.size(2);
  EpisodeTiling t = episode_tiling(S, L * N, episode_len, 1);
  Tensor x = steps.contiguous();
  const bool integer = dt == at::kInt || dt == at::kLong;
  Tensor episodes = at::empty({t.episodes, L, N}, steps.options().dtype(integer ? at::kLong : dt));
  if (dt == at::kInt) episode_sums(x.data_ptr<int32_t>(), episodes.data_ptr<int64_t>(), t);
  else if (dt == at::kLong) episode_sums(x.data_ptr<int64_t>(), episodes.data_ptr<int64_t>(), t);
  else if (dt == at::kFloat) episode_sums(x.data_ptr<float>(), episodes.data_ptr<float>(), t);
  else episode_sums(x.data_ptr<double>(), episodes.data_ptr<double>(), t);
  const auto st = dt == at::kDouble ? at::kDouble : at::kFloat;
  Tensor mean = at::empty({L, N}, steps.options().dtype(st));
  Tensor var = at::empty({L, N}, steps.options().dtype(st));
  Tensor e64 = episodes.to(at::kDouble);
  const double* ep = e64.data_ptr<double>();
  std::vector<double> scale(t.episodes, 1.0);
  scale[0] = static_cast<double>(episode_len) / static_cast<double>(t.first_len);
  Tensor m64 = at::empty({L, N}, steps.options().dtype(at::kDouble));
  Tensor v64 = at::empty({L, N}, steps.options().dtype(at::kDouble));
  double* mp = m64.data_ptr<double>();
  double* vp = v64.data_ptr<double>();
  const int64_t C = L * N;
  at::parallel_for(0, C, 2048, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0.0;
      for (int64_t i = 0; i < t.episodes; ++i) s += ep[i * C + c] * scale[i];
      const double m = s / static_cast<double>(t.episodes);
      double q = 0.0;
      for (int64_t i = 0; i < t.episodes; ++i) {
        const double d = ep[i * C + c] * scale[i] - m;
        q += d * d;
      }
      mp[c] = m;
      vp[c] = q / static_cast<double>(t.episodes);
    }
  });
  mean.copy_(m64);
  var.copy_(v64);
  return {episodes, mean, var};
}

// Sizes past what any tensor can hold are refused before the tiling arithmetic sees them.
constexpr int64_t kMaxSize = int64_t{1} << 48;

void check_size(const char* op, const char* name, int64_t v, int64_t lo) {
  TORCH_CHECK_VALUE(v >= lo && v <= kMaxSize, op, ": ", name, " must be in [", lo, ", 2^48], got ", v);
}

std::vector<int64_t> hotness_tiling_op(int64_t num_ids, int64_t num_experts, int64_t id_bytes,
                                       int64_t count_bytes, int64_t max_cores, int64_t ub_capacity) {
  check_size("hotness_tiling", "num_ids", num_ids, 0);
  check_size("hotness_tiling", "num_experts", num_experts, 1);
  check_size("hotness_tiling", "max_cores", max_cores, 1);
  check_size("hotness_tiling", "ub_capacity", ub_capacity, kBlockBytes);
  TORCH_CHECK_VALUE(id_bytes == 4 || id_bytes == 8, "hotness_tiling: id_bytes must be 4 or 8, got ", id_bytes);
  TORCH_CHECK_VALUE(count_bytes == 4 || count_bytes == 8, "hotness_tiling: count_bytes must be 4 or 8, got ",
                    count_bytes);
  HistogramTiling t = histogram_tiling(num_ids, num_experts, id_bytes, count_bytes, max_cores, ub_capacity);
  return {t.cores, t.per_core, t.tile, t.hist_len, t.ub_bytes};
}

std::vector<int64_t> episode_tiling_op(int64_t steps, int64_t columns, int64_t episode_len, int64_t max_cores) {
  check_size("episode_tiling", "steps", steps, 1);
  check_size("episode_tiling", "columns", columns, 0);
  TORCH_CHECK_VALUE(episode_len >= 1, "episode_tiling: episode_len must be >= 1, got ", episode_len);
  check_size("episode_tiling", "max_cores", max_cores, 1);
  EpisodeTiling t = episode_tiling(steps, columns, episode_len, max_cores);
  return {t.episodes, t.first_len, t.cores, t.per_core};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(flashlb, m) {
  // check_ids: refuse ids >= N on accelerators too (a host synchronisation there); the CPU
  // always refuses them. flashlb.ops passes its set_debug_checks setting here.
  m.def("accumulate_hotness(Tensor(a!) hotness, Tensor topk_ids, int layer, bool check_ids=False) -> ()");
  m.def("episode_stats(Tensor steps, int episode_len) -> (Tensor episodes, Tensor mean, Tensor var)");
  // The NPU kernels' work split, exposed so that the CPU tests can check its arithmetic.
  m.def("hotness_tiling(int num_ids, int num_experts, int id_bytes, int count_bytes, int max_cores, "
        "int ub_capacity) -> int[]");
  m.def("episode_tiling(int steps, int columns, int episode_len, int max_cores) -> int[]");
  m.impl("hotness_tiling", &hotness_tiling_op);
  m.impl("episode_tiling", &episode_tiling_op);
}

TORCH_LIBRARY_IMPL(flashlb, CPU, m) {
  m.impl("accumulate_hotness", &accumulate_hotness_cpu);
  m.impl("episode_stats", &episode_stats_cpu);
}

}  // namespace flashlb
