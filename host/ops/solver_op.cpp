// torch.ops.flashlb.joint_search: the C++ search of host/solver, batched over problems.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <optional>
#include <vector>
#include <tuple>

#include <unistd.h>

#include "../solver/assignment.h"
#include "../solver/joint_search.h"

namespace flashlb {
namespace {

using at::Tensor;

void check_rows(const Tensor& t, const char* name, at::ScalarType dt, int64_t dim, int64_t rows) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "joint_search: ", name, " must be on the CPU");
  TORCH_CHECK_VALUE(t.scalar_type() == dt, "joint_search: ", name, " must be ", dt, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, "joint_search: ", name, " must have ", dim, " dimensions");
  TORCH_CHECK_VALUE(t.size(0) == rows, "joint_search: ", name, " must have ", rows, " rows");
}

// loads [B, T, N] f64 (each episode's device average 1), episode_weights [B, T] f64.
// Exactly one start: counts [B, N] i64 (a placement is built for them) or init_slots [B, P]
// i64 (the search starts from that placement, with its own counts). anchor [B, P] i64 or
// None: the placement in service, each slot that differs costs move_penalty.
// time_limit: seconds for the whole call, shared fairly among the problems; None: no limit.
// Returns slots [B, P] i64, counts [B, N] i64, stats [B, 3] f64 (peak ratio, objective, moves).
std::tuple<Tensor, Tensor, Tensor> joint_search_cpu(
    const Tensor& loads, const Tensor& episode_weights, const std::optional<Tensor>& counts,
    const std::optional<Tensor>& init_slots, const std::optional<Tensor>& anchor,
    int64_t num_devices, int64_t slots_per_device, double smoothing, double move_penalty,
    int64_t perturb_rounds, int64_t seed, std::optional<double> time_limit) {
  TORCH_CHECK_VALUE(loads.dim() == 3, "joint_search: loads must be [B, T, N]");
  const int64_t B = loads.size(0), T = loads.size(1), N = loads.size(2);
  TORCH_CHECK_VALUE(num_devices >= 1 && slots_per_device >= 1,
                    "joint_search: num_devices and slots_per_device must be >= 1");
  int64_t P = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(num_devices, slots_per_device, &P),
                    "joint_search: num_devices * slots_per_device overflows int64");
  // Sizes whose arrays cannot fit are refused before anything is allocated (as flashlb.plan
  // refuses them): the outputs, and per worker the search's state - per-device expert flags
  // (D * N, and as many for an anchor), per-slot and per-device loads of every episode.
  {
    const double d = static_cast<double>(num_devices), p = static_cast<double>(P);
    const double t = static_cast<double>(T), n = static_cast<double>(N);
    const double workers = static_cast<double>(std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads())));
    const double need = static_cast<double>(B) * 8.0 * (p + n + 3.0) +
                        (B > 0 ? workers * (2.0 * d * n + 16.0 * p * t + 16.0 * d * t + 48.0 * p + 24.0 * n) : 0.0);
    const double memory = static_cast<double>(sysconf(_SC_PAGE_SIZE)) * static_cast<double>(sysconf(_SC_PHYS_PAGES));
    TORCH_CHECK_VALUE(need <= memory / 2, "joint_search: ", num_devices, " devices x ", slots_per_device,
                      " slots for ", N, " experts need about ", need / 1073741824.0,
                      " GiB, more than this machine can hold");
  }
  check_rows(loads, "loads", at::kDouble, 3, B);
  check_rows(episode_weights, "episode_weights", at::kDouble, 2, B);
  TORCH_CHECK_VALUE(episode_weights.size(1) == T, "joint_search: episode_weights must be [B, T]");
  TORCH_CHECK_VALUE(counts.has_value() != init_slots.has_value(),
                    "joint_search: give exactly one of counts (build a placement) and "
                    "init_slots (start from one)");
  // A day at most: a larger (or infinite) limit would overflow the deadline; None: no limit.
  TORCH_CHECK_VALUE(!time_limit.has_value() || (*time_limit > 0 && *time_limit <= 86400.0),
                    "joint_search: time_limit must be in (0, 86400] seconds (None: no limit)");
  TORCH_CHECK_VALUE(perturb_rounds >= 0 && seed >= 0 && smoothing >= 0 && move_penalty >= 0 &&
                        std::isfinite(smoothing) && std::isfinite(move_penalty),
                    "joint_search: perturb_rounds, seed, smoothing and move_penalty must be finite, >= 0");
  // A NaN or inf load would leave an episode without a heaviest device.
  TORCH_CHECK_VALUE(B == 0 || T == 0 || N == 0 ||
                        (at::isfinite(loads).all().item<bool>() && (loads >= 0).all().item<bool>()),
                    "joint_search: loads must be finite and >= 0");
  TORCH_CHECK_VALUE(B == 0 || T == 0 || (at::isfinite(episode_weights).all().item<bool>() &&
                                         (episode_weights >= 0).all().item<bool>()),
                    "joint_search: episode_weights must be finite and >= 0");
  Tensor w = loads.contiguous(), ew = episode_weights.contiguous();
  Tensor cnt = at::zeros({B, N}, loads.options().dtype(at::kLong));
  Tensor slots = at::empty({B, P}, loads.options().dtype(at::kLong));
  const bool build = counts.has_value();
  if (build) {
    check_rows(*counts, "counts", at::kLong, 2, B);
    TORCH_CHECK_VALUE(counts->size(1) == N, "joint_search: counts must be [B, N]");
    cnt.copy_(*counts);
  } else {
    check_rows(*init_slots, "init_slots", at::kLong, 2, B);
    TORCH_CHECK_VALUE(init_slots->size(1) == P, "joint_search: init_slots must be [B, P]");
    TORCH_CHECK_VALUE(B == 0 || P == 0 || (init_slots->min().item<int64_t>() >= 0 &&
                                           init_slots->max().item<int64_t>() < N),
                      "joint_search: init_slots ids must lie in [0, N)");
    slots.copy_(*init_slots);
  }
  Tensor anc;
  if (anchor.has_value()) {
    check_rows(*anchor, "anchor", at::kLong, 2, B);
    TORCH_CHECK_VALUE(anchor->size(1) == P, "joint_search: anchor must be [B, P]");
    anc = anchor->contiguous();
    TORCH_CHECK_VALUE(B == 0 || (anc.min().item<int64_t>() >= 0 && anc.max().item<int64_t>() < N),
                      "joint_search: anchor ids must lie in [0, N)");
  }
  Tensor stats = at::zeros({B, 3}, loads.options());
  const double* wp = w.data_ptr<double>();
  const double* ep = ew.data_ptr<double>();
  int64_t* cp = cnt.data_ptr<int64_t>();
  int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* ap = anc.defined() ? anc.data_ptr<int64_t>() : nullptr;
  double* st = stats.data_ptr<double>();
  // Problems are handed out one at a time (their costs differ a lot: a start near a local
  // optimum ends at once), so no thread idles while another has a queue. With a time limit,
  // a problem started with R problems left and W threads at work may use W / R of the time
  // that remains: every problem gets its share, and time one leaves over passes to the rest.
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
  std::atomic<int64_t> next{0};
  const auto start = std::chrono::steady_clock::now();
  const auto end = time_limit.has_value()
                       ? start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                     std::chrono::duration<double>(*time_limit))
                       : std::chrono::steady_clock::time_point::max();
  at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
    // Run inline (inside another parallel region, or one thread), one call gets every worker.
    const int64_t at_work = std::max<int64_t>(1, workers / std::max<int64_t>(1, hi - lo));
    for (int64_t b = next.fetch_add(1); b < B; b = next.fetch_add(1)) {
      SearchOptions opt;
      opt.smoothing = smoothing;
      opt.move_penalty = move_penalty;
      opt.perturb_rounds = perturb_rounds;
      opt.seed = static_cast<uint64_t>(seed) * 1000003ull + static_cast<uint64_t>(b);
      if (time_limit.has_value()) {
        const auto now = std::chrono::steady_clock::now();
        const double share = static_cast<double>(at_work) / static_cast<double>(std::max<int64_t>(at_work, B - b));
        opt.deadline = now < end ? now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                             (end - now) * share)
                                 : end;
      }
      opt.build = build;
      SearchResult r = joint_search(T, N, num_devices, slots_per_device, wp + b * T * N,
                                    ep + b * T, cp + b * N, sp + b * P,
                                    ap ? ap + b * P : nullptr, opt);
      st[3 * b] = r.peak_ratio;
      st[3 * b + 1] = r.objective;
      st[3 * b + 2] = static_cast<double>(r.moves);
    }
  });
  return {slots, cnt, stats};
}

// scores [B, n, n] f64 -> [B, n] i64: row i matched to column out[i], maximising the sum.
Tensor max_assignment_cpu(const Tensor& scores) {
  TORCH_CHECK_VALUE(scores.dim() == 3 && scores.size(1) == scores.size(2),
                    "max_assignment: scores must be [B, n, n], got ", scores.sizes());
  TORCH_CHECK_VALUE(scores.scalar_type() == at::kDouble, "max_assignment: scores must be float64");
  TORCH_CHECK_VALUE(scores.device().is_cpu() && scores.layout() == at::kStrided,
                    "max_assignment: scores must be a dense CPU tensor");
  const int64_t B = scores.size(0), n = scores.size(1);
  TORCH_CHECK_VALUE(scores.numel() == 0 || at::isfinite(scores).all().item<bool>(),
                    "max_assignment: scores must be finite (NaN or inf found)");
  Tensor s = scores.contiguous();
  // The assignment does not change with a positive scale; keep the potentials far from
  // overflow (and subnormal scores distinct) by bringing extreme magnitudes to 1.
  if (s.numel() > 0) {
    const double big = s.abs().max().item<double>();
    if (big > 1e100 || (big > 0 && big < 1e-100)) s = (s / big).contiguous();
  }
  Tensor out = at::empty({B, n}, scores.options().dtype(at::kLong));
  const double* sp = s.data_ptr<double>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) max_assignment(n, sp + b * n * n, op + b * n);
  });
  return out;
}

// The default greedy's packing: items heaviest first (stable), each onto the lightest pack
// with room (lowest id on ties). weight [X, M] f64 -> (pack [X, M], rank [X, M]) i64.
std::tuple<Tensor, Tensor> balanced_packing_cpu(const Tensor& weight, int64_t num_packs) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.scalar_type() == at::kDouble,
                    "balanced_packing: weight must be a [X, M] float64 tensor");
  const int64_t X = weight.size(0), M = weight.size(1);
  TORCH_CHECK_VALUE(num_packs >= 1 && M % num_packs == 0,
                    "balanced_packing: the items must fill num_packs packs evenly");
  const int64_t per = M / num_packs;
  Tensor w = weight.contiguous();
  Tensor order = std::get<1>(w.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true)).contiguous();
  Tensor pack = at::empty({X, M}, weight.options().dtype(at::kLong));
  Tensor rank = at::empty({X, M}, weight.options().dtype(at::kLong));
  const double* wp = w.data_ptr<double>();
  const int64_t* op = order.data_ptr<int64_t>();
  int64_t* pp = pack.data_ptr<int64_t>();
  int64_t* rp = rank.data_ptr<int64_t>();
  at::parallel_for(0, X, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> load(num_packs);
    std::vector<int64_t> fill(num_packs);
    for (int64_t x = lo; x < hi; ++x) {
      std::fill(load.begin(), load.end(), 0.0);
      std::fill(fill.begin(), fill.end(), 0);
      for (int64_t k = 0; k < M; ++k) {
        const int64_t item = op[x * M + k];
        int64_t best = -1;
        for (int64_t q = 0; q < num_packs; ++q)
          if (fill[q] < per && (best < 0 || load[q] < load[best])) best = q;
        pp[x * M + item] = best;
        rp[x * M + item] = fill[best]++;
        load[best] += wp[x * M + item];
      }
    }
  });
  return {pack, rank};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(flashlb, m) {
  m.def("balanced_packing(Tensor weight, int num_packs) -> (Tensor, Tensor)");
  m.def("max_assignment(Tensor scores) -> Tensor");
  // Keyword-only past the loads; flashlb.solvers.search.joint_search wraps it with a named result.
  m.def(
      "joint_search(Tensor loads, Tensor episode_weights, *, Tensor? counts=None, "
      "Tensor? init_slots=None, Tensor? anchor=None, int num_devices, int slots_per_device, "
      "float smoothing=0.05, float move_penalty=0., int perturb_rounds=0, int seed=0, "
      "float? time_limit=None) -> (Tensor slots, Tensor counts, Tensor stats)");
}

TORCH_LIBRARY_IMPL(flashlb, CPU, m) {
  m.impl("joint_search", &joint_search_cpu);
  m.impl("max_assignment", &max_assignment_cpu);
  m.impl("balanced_packing", &balanced_packing_cpu);
}

}  // namespace flashlb
