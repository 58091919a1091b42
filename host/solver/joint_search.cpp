// Joint replica allotment and placement: construction + local search (see joint_search.h).
//
// Objective for one layer, with device loads load[d][t] normalised so each episode averages 1
// and episode weights weight[t]:
//   objective = sum_t weight[t] * max_d load[d][t]                 (peak_sum: per-episode peak/avg)
//             + smoothing * sum_t weight[t] * mean_d load[d][t]^2    (square_sum: below the peak)
//             + move_penalty * moves                                 (slots changed w.r.t. the anchor)
// Moves of the local search:
//   swap  - exchange two replicas between a peak device and any other device;
//   shift - hand one replica of a multi-replica expert to another expert, which changes the
//           replica counts of both and so the load of every device that holds either.
// Every accepted move lowers the objective strictly, so the search ends; perturbation rounds then kick
// the best placement and search again, keeping the best one found.
#include "joint_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

// Bounds checks of the search's indices: compiled in debug builds (no NDEBUG) and in the
// sanitizer build (FLASHLB_BOUNDS_CHECKS); a failure throws instead of writing out of bounds.
#if !defined(NDEBUG) || defined(FLASHLB_BOUNDS_CHECKS)
#define FLASHLB_CHECK(cond)                                                              \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw std::logic_error("flashlb: internal check failed: " #cond " (" __FILE__ ")"); \
  } while (0)
#else
#define FLASHLB_CHECK(cond) ((void)0)
#endif

// The inner loops of the swap search get an AVX2 clone where the CPU has it (chosen at load
// time; the pair loops accumulate each pair's episodes in the same order, so both clones
// return the same figures).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(FLASHLB_NO_CLONES)
#define FLASHLB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FLASHLB_CLONES
#endif

namespace flashlb {
namespace {

constexpr double kTol = 1e-10;
constexpr int kTop = 4;            // devices remembered per episode, heaviest first
constexpr int kExtraPartners = 3;  // partners tried after the first improving one
constexpr double kWander = 0.02;   // perturbation rounds walk on within 2% of the best ...
constexpr int64_t kWanderRounds = 8;  // ... for at most this many rounds without a new best

struct Rng {  // splitmix64: small, fast and identical on every platform
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
};

class Search {
 public:
  Search(int64_t T, int64_t N, int64_t D, int64_t S, const double* loads,
         const double* episode_weights, const int64_t* anchor, const SearchOptions& opt)
      : episodes_(T), experts_(N), devices_(D), slots_per_device_(S), slots_(D * S),
        loads_(loads), weights_(episode_weights), options_(opt),
        smoothing_per_device_(opt.smoothing / static_cast<double>(D)),
        move_penalty_(opt.move_penalty), slot_expert_(D * S), counts_(N),
        replica_load_(D * S * T), device_load_(D * T), holds_(D * N), top_device_(kTop * T),
        top_load_(kTop * T), changed_(D, 0), others_peak_(T), load_a_(T), load_b_(T),
        new_load_(D * T) {
    if (anchor != nullptr) {
      anchor_holds_.assign(D * N, 0);
      for (int64_t p = 0; p < slots_; ++p) anchor_holds_[(p / slots_per_device_) * experts_ + anchor[p]] = 1;
    }
    for (int64_t t = 0; t < episodes_; ++t)
      if (weights_[t] > 0) live_episodes_.push_back(t);
  }

  // ---------------------------------------------------------------- state
  void set_state(const std::vector<int64_t>& slots, const std::vector<int64_t>& counts) {
    FLASHLB_CHECK(static_cast<int64_t>(slots.size()) == slots_ &&
                  static_cast<int64_t>(counts.size()) == experts_);
    for (int64_t p = 0; p < slots_; ++p) slot_expert_[p] = slots[p];
    for (int64_t e = 0; e < experts_; ++e) counts_[e] = counts[e];
    rebuild();
  }

  void rebuild() {
    std::fill(device_load_.begin(), device_load_.end(), 0.0);
    std::fill(holds_.begin(), holds_.end(), 0);
    for (int64_t p = 0; p < slots_; ++p) {
      int64_t e = slot_expert_[p], d = p / slots_per_device_;
      FLASHLB_CHECK(e >= 0 && e < experts_ && counts_[e] >= 1);
      holds_[d * experts_ + e] = 1;
      for (int64_t t = 0; t < episodes_; ++t) {
        replica_load_[p * episodes_ + t] = loads_[t * experts_ + e] / static_cast<double>(counts_[e]);
        device_load_[d * episodes_ + t] += replica_load_[p * episodes_ + t];
      }
    }
    kept_ = 0;
    if (!anchor_holds_.empty())
      for (int64_t i = 0; i < devices_ * experts_; ++i) kept_ += holds_[i] & anchor_holds_[i];
    refresh();
  }

  // Per-episode heaviest devices, peak_sum_, square_sum_ and objective_ from the loads.
  void refresh() {
    peak_sum_ = 0.0;
    square_sum_ = 0.0;
    for (int64_t t : live_episodes_) {
      double v[kTop];
      int64_t id[kTop];
      for (int k = 0; k < kTop; ++k) { v[k] = -1.0; id[k] = -1; }
      double sq = 0.0;
      for (int64_t d = 0; d < devices_; ++d) {
        double x = device_load_[d * episodes_ + t];
        sq += x * x;
        if (!(x > v[kTop - 1])) continue;  // also skips NaN: the peak index stays valid
        int k = kTop - 1;
        while (k > 0 && x > v[k - 1]) { v[k] = v[k - 1]; id[k] = id[k - 1]; --k; }
        v[k] = x;
        id[k] = d;
      }
      for (int k = 0; k < kTop; ++k) {
        top_load_[kTop * t + k] = v[k] < 0 ? 0.0 : v[k];
        top_device_[kTop * t + k] = id[k];
      }
      peak_sum_ += weights_[t] * v[0];
      square_sum_ += weights_[t] * sq;
    }
    objective_ = peak_sum_ + smoothing_per_device_ * square_sum_ + move_penalty_ * static_cast<double>(slots_ - kept_);
  }

  double peak_without(int64_t t, int64_t a, int64_t b) const {  // max load over devices not a, b
    for (int k = 0; k < kTop; ++k) {
      int64_t i = top_device_[kTop * t + k];
      if (i < 0) return 0.0;
      if (i != a && i != b) return top_load_[kTop * t + k];
    }
    return 0.0;
  }

  bool out_of_time() const {
    return options_.deadline != std::chrono::steady_clock::time_point::max() &&
           std::chrono::steady_clock::now() > options_.deadline;
  }

  // ---------------------------------------------------------------- construction
  // Replicas heaviest first, each onto the open device (free slot, expert absent) that adds
  // the least to the weighted sum of squared loads: with one episode the least-loaded device,
  // with several the one whose load is least correlated with the replica's.
  void build(const std::vector<int64_t>& counts) {
    for (int64_t e = 0; e < experts_; ++e) counts_[e] = counts[e];
    std::vector<double> key(experts_, 0.0);
    for (int64_t e = 0; e < experts_; ++e)
      for (int64_t t : live_episodes_) key[e] += weights_[t] * loads_[t * experts_ + e] / counts_[e];
    std::vector<int64_t> order;
    order.reserve(slots_);
    std::vector<int64_t> ex(experts_);
    std::iota(ex.begin(), ex.end(), 0);
    std::stable_sort(ex.begin(), ex.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
    for (int64_t e : ex)
      for (int64_t k = 0; k < counts_[e]; ++k) order.push_back(e);

    std::vector<int64_t> fill(devices_, 0);
    std::vector<double> mean(devices_, 0.0);
    std::fill(device_load_.begin(), device_load_.end(), 0.0);
    std::fill(holds_.begin(), holds_.end(), 0);
    std::fill(slot_expert_.begin(), slot_expert_.end(), -1);
    for (int64_t e : order) {
      int64_t best = -1;
      double bc = 0.0, bm = 0.0;
      for (int64_t d = 0; d < devices_; ++d) {
        if (fill[d] == slots_per_device_ || holds_[d * experts_ + e]) continue;
        double c = 0.0;
        for (int64_t t : live_episodes_) c += weights_[t] * device_load_[d * episodes_ + t] * loads_[t * experts_ + e];
        if (best < 0 || c < bc - kTol ||
            (c <= bc + kTol && (mean[d] < bm - kTol || (mean[d] <= bm + kTol && fill[d] < fill[best])))) {
          best = d;
          bc = c;
          bm = mean[d];
        }
      }
      if (best < 0) best = repair(e, fill);
      FLASHLB_CHECK(best >= 0 && best < devices_ && fill[best] < slots_per_device_);
      int64_t p = best * slots_per_device_ + fill[best]++;
      slot_expert_[p] = e;
      holds_[best * experts_ + e] = 1;
      for (int64_t t = 0; t < episodes_; ++t) {
        double x = loads_[t * experts_ + e] / counts_[e];
        device_load_[best * episodes_ + t] += x;
        if (weights_[t] > 0) mean[best] += weights_[t] * x;
      }
    }
    rebuild();
  }

  // Every open device already holds e. Some full device d2 lacks e (e has fewer than D
  // replicas placed so far) and holds an expert f that an open device d lacks (d has fewer
  // than S experts): move f to d and free its slot in d2 for e. Returns d2 with one open slot.
  int64_t repair(int64_t e, std::vector<int64_t>& fill) {
    for (int64_t d = 0; d < devices_; ++d) {
      if (fill[d] == slots_per_device_) continue;
      for (int64_t d2 = 0; d2 < devices_; ++d2) {
        if (fill[d2] != slots_per_device_ || holds_[d2 * experts_ + e]) continue;
        for (int64_t k = 0; k < slots_per_device_; ++k) {
          int64_t p2 = d2 * slots_per_device_ + k, f = slot_expert_[p2];
          if (holds_[d * experts_ + f]) continue;
          int64_t p = d * slots_per_device_ + fill[d]++;
          slot_expert_[p] = f;
          holds_[d * experts_ + f] = 1;
          holds_[d2 * experts_ + f] = 0;
          for (int64_t t = 0; t < episodes_; ++t) {
            double x = loads_[t * experts_ + f] / counts_[f];
            device_load_[d * episodes_ + t] += x;
            device_load_[d2 * episodes_ + t] -= x;
          }
          // Slot p2 becomes the last open slot of d2: compact d2 so its open slot is last.
          int64_t last = d2 * slots_per_device_ + slots_per_device_ - 1;
          slot_expert_[p2] = slot_expert_[last];
          slot_expert_[last] = -1;
          fill[d2] = slots_per_device_ - 1;
          return d2;
        }
      }
    }
    throw std::logic_error("flashlb: no feasible device for a replica (internal error)");
  }

  // ---------------------------------------------------------------- moves
  // Source devices: those that are the peak of some weighted episode, most weight first.
  std::vector<int64_t> sources() const {
    std::vector<double> c(devices_, 0.0);
    for (int64_t t : live_episodes_) {
      const int64_t d = top_device_[kTop * t];
      if (d >= 0) c[d] += weights_[t];  // -1: no device is loaded in this episode
    }
    std::vector<int64_t> ds;
    for (int64_t d = 0; d < devices_; ++d)
      if (c[d] > 0) ds.push_back(d);
    std::stable_sort(ds.begin(), ds.end(), [&](int64_t a, int64_t b) { return c[a] > c[b]; });
    if (ds.size() > 3) ds.resize(3);
    return ds;
  }

  int64_t anchor_gain(int64_t d, int64_t e) const {
    return anchor_holds_.empty() ? 0 : anchor_holds_[d * experts_ + e];
  }

  // Best swap between source device a and partner b; returns the change of the objective (or 0).
  // The figures of one slot i of a against every slot of b are computed side by side (b's
  // replica loads transposed to [T, S]), so the loop over b's slots vectorises while each
  // pair still sums its episodes in order: the same figures, bit for bit, as pair by pair.
  FLASHLB_CLONES double best_swap_with(int64_t a, int64_t b, int64_t& bi, int64_t& bj) {
    if (move_penalty_ == 0.0) return best_swap_pruned(a, b, bi, bj);
    double best = -kTol;
    const int64_t S = slots_per_device_;
    for (int64_t t = 0; t < episodes_; ++t) {
      others_peak_[t] = weights_[t] > 0 ? peak_without(t, a, b) : 0.0;
      load_a_[t] = device_load_[a * episodes_ + t];
      load_b_[t] = device_load_[b * episodes_ + t];
      for (int64_t k = 0; k < S; ++k) partner_load_[t * S + k] = replica_load_[(b * S + k) * episodes_ + t];
    }
    double* dp = pair_peak_.data();
    double* ds = pair_square_.data();
    const double* bl = partner_load_.data();
    for (int64_t i = a * S; i < (a + 1) * S; ++i) {
      int64_t ei = slot_expert_[i];
      if (holds_[b * experts_ + ei]) continue;
      const double* ri = &replica_load_[i * episodes_];
      std::fill(dp, dp + S, 0.0);
      std::fill(ds, ds + S, 0.0);
      for (int64_t t = 0; t < episodes_; ++t) {
        const double r = ri[t], la = load_a_[t], lb = load_b_[t], op = others_peak_[t];
        const double w = weights_[t], top = top_load_[kTop * t], gap = la - lb;
        const double* rj = bl + t * S;
        for (int64_t k = 0; k < S; ++k) {
          double dl = rj[k] - r;
          double m = std::max(std::max(la + dl, lb - dl), op);
          dp[k] += w * (m - top);
          ds[k] += w * dl * (gap + dl);
        }
      }
      for (int64_t j = b * S; j < (b + 1) * S; ++j) {
        int64_t ej = slot_expert_[j];
        if (holds_[a * experts_ + ej]) continue;
        double dk = static_cast<double>(anchor_gain(a, ej) - anchor_gain(a, ei) +
                                        anchor_gain(b, ei) - anchor_gain(b, ej));
        double d_objective = dp[j - b * S] + 2.0 * smoothing_per_device_ * ds[j - b * S] - move_penalty_ * dk;
        if (d_objective < best) {
          best = d_objective;
          bi = i;
          bj = j;
        }
      }
    }
    return best;
  }

  // best_swap_with without move penalty: pair by pair, as the pruning skips most pairs.
  FLASHLB_CLONES double best_swap_pruned(int64_t a, int64_t b, int64_t& bi, int64_t& bj) {
    double best = -kTol;
    for (int64_t t = 0; t < episodes_; ++t) {
      others_peak_[t] = weights_[t] > 0 ? peak_without(t, a, b) : 0.0;
      load_a_[t] = device_load_[a * episodes_ + t];
      load_b_[t] = device_load_[b * episodes_ + t];
    }
    for (int64_t i = a * slots_per_device_; i < (a + 1) * slots_per_device_; ++i) {
      int64_t ei = slot_expert_[i];
      if (holds_[b * experts_ + ei]) continue;
      const double* ri = &replica_load_[i * episodes_];
      for (int64_t j = b * slots_per_device_; j < (b + 1) * slots_per_device_; ++j) {
        int64_t ej = slot_expert_[j];
        if (holds_[a * experts_ + ej]) continue;
        const double* rj = &replica_load_[j * episodes_];
        // d_peak >= key[j] - key[i] (a stays the peak of its episodes): no gain in the peaks.
        if (peak_share_[j] >= peak_share_[i]) continue;
        double d_peak = 0.0, d_square = 0.0;
        for (int64_t t = 0; t < episodes_; ++t) {  // flat loop over all episodes: vectorises
          double dl = rj[t] - ri[t];
          double na = load_a_[t] + dl, nb = load_b_[t] - dl;
          double m = std::max(std::max(na, nb), others_peak_[t]);
          d_peak += weights_[t] * (m - top_load_[kTop * t]);
          d_square += weights_[t] * dl * (load_a_[t] - load_b_[t] + dl);
        }
        double dk = static_cast<double>(anchor_gain(a, ej) - anchor_gain(a, ei) +
                                        anchor_gain(b, ei) - anchor_gain(b, ej));
        double d_objective = d_peak + 2.0 * smoothing_per_device_ * d_square - move_penalty_ * dk;
        if (d_objective < best) {
          best = d_objective;
          bi = i;
          bj = j;
        }
      }
    }
    return best;
  }

  // Swap a replica of a peak device with one of another device. Partners are tried by
  // decreasing room below the peaks; after the first partner that offers an improvement,
  // a few more are tried and the best swap is applied.
  bool swap_step() {
    if (devices_ < 2) return false;
    std::vector<double> room(devices_);
    std::vector<int64_t> order(devices_);
    for (int64_t a : sources()) {
      // key[p]: load slot p would bring to a in the episodes where a is the peak.
      std::fill(peak_share_.begin(), peak_share_.end(), 0.0);
      for (int64_t t : live_episodes_) {
        if (top_device_[kTop * t] != a) continue;
        for (int64_t p = 0; p < slots_; ++p) peak_share_[p] += weights_[t] * replica_load_[p * episodes_ + t];
      }
      for (int64_t b = 0; b < devices_; ++b) {
        double x = 0.0;
        for (int64_t t : live_episodes_) x += weights_[t] * (top_load_[kTop * t] - device_load_[b * episodes_ + t]);
        room[b] = x;
      }
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return room[x] > room[y]; });
      double best = -kTol;
      int64_t bi = -1, bj = -1, extra = -1;
      for (int64_t b : order) {
        if (b == a) continue;
        int64_t i = -1, j = -1;
        double v = best_swap_with(a, b, i, j);
        if (v < best) {
          best = v;
          bi = i;
          bj = j;
          if (extra < 0) extra = kExtraPartners;
        }
        if (extra >= 0 && extra-- == 0) break;
      }
      if (bi >= 0) {
        apply_swap(bi, bj);
        return true;
      }
    }
    return false;
  }

  void apply_swap(int64_t i, int64_t j) {
    FLASHLB_CHECK(i >= 0 && i < slots_ && j >= 0 && j < slots_);
    int64_t a = i / slots_per_device_, b = j / slots_per_device_, ei = slot_expert_[i], ej = slot_expert_[j];
    kept_ += anchor_gain(a, ej) - anchor_gain(a, ei) + anchor_gain(b, ei) - anchor_gain(b, ej);
    holds_[a * experts_ + ei] = 0;
    holds_[b * experts_ + ej] = 0;
    holds_[a * experts_ + ej] = 1;
    holds_[b * experts_ + ei] = 1;
    std::swap(slot_expert_[i], slot_expert_[j]);
    for (int64_t t = 0; t < episodes_; ++t) {
      double dl = replica_load_[j * episodes_ + t] - replica_load_[i * episodes_ + t];
      std::swap(replica_load_[i * episodes_ + t], replica_load_[j * episodes_ + t]);
      device_load_[a * episodes_ + t] += dl;
      device_load_[b * episodes_ + t] -= dl;
    }
    refresh();
  }

  // The objective after slot s changes from its expert x to expert y (replica counts x-1, y+1). Only
  // the devices holding x or y change; the peak of the others comes from the top lists.
  double shift_value(int64_t s, int64_t y) {
    int64_t d = s / slots_per_device_, x = slot_expert_[s];
    double cx = static_cast<double>(counts_[x]), cy = static_cast<double>(counts_[y]);
    touched_.clear();
    for (int64_t q = 0; q < devices_; ++q) {
      bool hx = holds_[q * experts_ + x] && q != d, hy = holds_[q * experts_ + y];
      if (!hx && !hy && q != d) continue;
      touched_.push_back(q);
      changed_[q] = 1;
      for (int64_t t = 0; t < episodes_; ++t) {
        double v = device_load_[q * episodes_ + t];
        if (hx) v += loads_[t * experts_ + x] * (1.0 / (cx - 1.0) - 1.0 / cx);
        if (hy) v += loads_[t * experts_ + y] * (1.0 / (cy + 1.0) - 1.0 / cy);
        if (q == d) v += loads_[t * experts_ + y] / (cy + 1.0) - loads_[t * experts_ + x] / cx;
        new_load_[q * episodes_ + t] = v;
      }
    }
    double f = 0.0, dg = 0.0;
    for (int64_t t : live_episodes_) {
      double m = -1.0;
      for (int k = 0; k < kTop && m < 0; ++k) {
        int64_t i = top_device_[kTop * t + k];
        if (i < 0) m = 0.0;
        else if (!changed_[i]) m = top_load_[kTop * t + k];
      }
      if (m < 0) {  // every remembered device changed: scan the others
        m = 0.0;
        for (int64_t q = 0; q < devices_; ++q)
          if (!changed_[q]) m = std::max(m, device_load_[q * episodes_ + t]);
      }
      double g = 0.0;
      for (int64_t q : touched_) {
        double v = new_load_[q * episodes_ + t], o = device_load_[q * episodes_ + t];
        m = std::max(m, v);
        g += v * v - o * o;
      }
      f += weights_[t] * m;
      dg += weights_[t] * g;
    }
    for (int64_t q : touched_) changed_[q] = 0;
    int64_t kept = kept_ - anchor_gain(d, x) + anchor_gain(d, y);
    return f + smoothing_per_device_ * (square_sum_ + dg) + move_penalty_ * static_cast<double>(slots_ - kept);
  }

  bool shift_valid(int64_t s, int64_t y) const {
    int64_t x = slot_expert_[s];
    return x != y && counts_[x] >= 2 && counts_[y] < devices_ && !holds_[(s / slots_per_device_) * experts_ + y];
  }

  bool shift_step() {
    std::vector<int64_t> src = sources();
    if (src.empty()) return false;
    int64_t a = src[0];
    double best = objective_ - kTol;
    int64_t bs = -1, by = -1;
    auto consider = [&](int64_t s, int64_t y) {
      if (!shift_valid(s, y)) return;
      double v = shift_value(s, y);
      if (v < best) {
        best = v;
        bs = s;
        by = y;
      }
    };
    // (A) one more replica for an expert on the peak device, taken from any slot elsewhere.
    for (int64_t i = a * slots_per_device_; i < (a + 1) * slots_per_device_; ++i)
      for (int64_t s = 0; s < slots_; ++s) consider(s, slot_expert_[i]);
    // (B) a multi-replica slot on the peak device handed to any other expert.
    for (int64_t s = a * slots_per_device_; s < (a + 1) * slots_per_device_; ++s)
      if (counts_[slot_expert_[s]] >= 2)
        for (int64_t y = 0; y < experts_; ++y) consider(s, y);
    if (bs < 0) return false;
    apply_shift(bs, by);
    return true;
  }

  void apply_shift(int64_t s, int64_t y) {
    FLASHLB_CHECK(s >= 0 && s < slots_ && y >= 0 && y < experts_ && shift_valid(s, y));
    int64_t x = slot_expert_[s];
    slot_expert_[s] = y;
    counts_[x] -= 1;
    counts_[y] += 1;
    rebuild();
  }

  void local_search() {
    int64_t guard = 0, limit = 64 * slots_ + 1000;
    while (guard++ < limit && !out_of_time()) {
      if (swap_step()) continue;
      if (shift_step()) continue;
      break;
    }
  }

  // Kick the placement out of its local optimum: either move one or two replicas between
  // experts and rebuild the placement for the new counts (explores allotments), or make a
  // few random valid swaps between a peak device and another one (explores placements).
  void perturb(Rng& rng) {
    if (rng.below(2) == 0) {
      std::vector<int64_t> c(counts_);
      bool changed = false;
      for (int64_t n = 1 + rng.below(2); n > 0; --n) {
        for (int tries = 0; tries < 32; ++tries) {
          int64_t x = rng.below(experts_), y = rng.below(experts_);
          if (x == y || c[x] < 2 || c[y] >= devices_) continue;
          --c[x];
          ++c[y];
          changed = true;
          break;
        }
      }
      if (changed) {
        build(c);
        return;
      }
    }
    if (devices_ < 2) return;
    std::vector<int64_t> src = sources();
    for (int64_t n = 1 + rng.below(3); n > 0; --n) {
      for (int tries = 0; tries < 32; ++tries) {
        int64_t a = (!src.empty() && rng.below(2) == 0) ? src[rng.below(src.size())] : rng.below(devices_);
        int64_t b = rng.below(devices_);
        if (a == b) continue;
        int64_t i = a * slots_per_device_ + rng.below(slots_per_device_), j = b * slots_per_device_ + rng.below(slots_per_device_);
        if (slot_expert_[i] == slot_expert_[j] || holds_[b * experts_ + slot_expert_[i]] || holds_[a * experts_ + slot_expert_[j]]) continue;
        apply_swap(i, j);
        break;
      }
    }
  }

  int64_t moves() const { return anchor_holds_.empty() ? 0 : slots_ - kept_; }

  // What the caller minimises: the peaks plus the moves. The local search descends on the
  // objective (with the smoothing term, which leaves plateaus), but the best placement of
  // the rounds is chosen on this, the smoothing term only breaking ties: a smoother
  // placement with a higher peak is no better.
  double score() const { return peak_sum_ + move_penalty_ * static_cast<double>(moves()); }

  bool better_than(double score, double objective) const {
    double s = this->score();
    return s < score - kTol || (s <= score + kTol && objective_ < objective - kTol);
  }

  SearchResult run(Rng& rng) {
    local_search();
    std::vector<int64_t> best_slots(slot_expert_), best_counts(counts_);
    double best_score = score(), best_objective = objective_;
    int64_t since_best = 0;
    for (int64_t round = 0; round < options_.perturb_rounds && !out_of_time(); ++round) {
      perturb(rng);
      local_search();
      if (better_than(best_score, best_objective)) {
        best_score = score();
        best_objective = objective_;
        best_slots = slot_expert_;
        best_counts = counts_;
        since_best = 0;
      } else if (score() > best_score * (1.0 + kWander) || ++since_best % kWanderRounds == 0) {
        // Walk on from a placement not much worse than the best (the way out of a basin
        // whose every neighbour is worse), but not far, and not for long.
        set_state(best_slots, best_counts);
      }
    }
    if (slot_expert_ != best_slots) set_state(best_slots, best_counts);
    return {peak_sum_, objective_, moves()};
  }

  // Declared in the order of the constructor's initialiser list.
  int64_t episodes_, experts_, devices_, slots_per_device_, slots_;  // T, N, D, S, P = D * S
  const double* loads_;    // [T * N] episode-major, each episode's device average 1
  const double* weights_;  // [T] episode weights
  SearchOptions options_;
  double smoothing_per_device_;  // smoothing / D: the weight of the sum of squared loads
  double move_penalty_;
  std::vector<int64_t> slot_expert_;   // [P] expert held by each slot
  std::vector<int64_t> counts_;        // [N] replicas of each expert
  std::vector<double> replica_load_;   // [P * T] load of the replica in each slot, per episode
  std::vector<double> device_load_;    // [D * T]
  std::vector<uint8_t> holds_;         // [D * N] device d holds expert e
  std::vector<int64_t> top_device_;    // [T * kTop] heaviest devices per episode, -1 padded
  std::vector<double> top_load_;       // [T * kTop] their loads
  std::vector<uint8_t> changed_;       // scratch of shift_value: devices it changes [D]
  std::vector<double> others_peak_, load_a_, load_b_;  // scratch of best_swap_with [T]
  std::vector<double> partner_load_ = std::vector<double>(episodes_ * slots_per_device_);  // [T * S]
  std::vector<double> pair_peak_ = std::vector<double>(slots_per_device_);    // [S]
  std::vector<double> pair_square_ = std::vector<double>(slots_per_device_);  // [S]
  std::vector<double> new_load_;       // scratch of shift_value: new loads [D * T]
  std::vector<int64_t> touched_;       // scratch of shift_value: devices it changes
  std::vector<double> peak_share_ = std::vector<double>(slots_);  // scratch of swap_step [P]
  std::vector<uint8_t> anchor_holds_;  // [D * N] device d held expert e in the anchor
  std::vector<int64_t> live_episodes_; // episodes with positive weight
  int64_t kept_ = 0;                   // (device, expert) pairs shared with the anchor
  double peak_sum_ = 0.0;              // sum_t weight * peak load
  double square_sum_ = 0.0;            // sum_t weight * sum_d load^2
  double objective_ = 0.0;             // peak_sum_ + smoothing and move terms
};

}  // namespace

SearchResult joint_search(int64_t T, int64_t N, int64_t D, int64_t S, const double* loads,
                          const double* episode_weights, int64_t* counts, int64_t* slots,
                          const int64_t* anchor, const SearchOptions& opt) {
  if (T < 1 || N < 1 || D < 1 || S < 1 || S > N)
    throw std::invalid_argument("flashlb.joint_search: sizes need T, N, D, S >= 1, S <= N <= D * S");
  int64_t P = 0, TN = 0, DN = 0, PT = 0;
  if (__builtin_mul_overflow(D, S, &P) || __builtin_mul_overflow(T, N, &TN) ||
      __builtin_mul_overflow(D, N, &DN) || __builtin_mul_overflow(P, T, &PT))
    throw std::invalid_argument("flashlb.joint_search: sizes overflow 64-bit arithmetic");
  if (P < N)
    throw std::invalid_argument("flashlb.joint_search: sizes need T, N, D, S >= 1, S <= N <= D * S");
  // Loads and weights must be finite and >= 0: a NaN would leave an episode without a peak.
  for (int64_t i = 0; i < TN; ++i)
    if (!(loads[i] >= 0.0 && loads[i] <= std::numeric_limits<double>::max()))
      throw std::invalid_argument("flashlb.joint_search: loads must be finite and >= 0");
  for (int64_t t = 0; t < T; ++t)
    if (!(episode_weights[t] >= 0.0 && episode_weights[t] <= std::numeric_limits<double>::max()))
      throw std::invalid_argument("flashlb.joint_search: episode weights must be finite and >= 0");
  if (anchor != nullptr)
    for (int64_t p = 0; p < P; ++p)
      if (anchor[p] < 0 || anchor[p] >= N)
        throw std::invalid_argument("flashlb.joint_search: anchor ids must lie in [0, N)");
  Search search(T, N, D, S, loads, episode_weights, anchor, opt);
  if (opt.build) {
    std::vector<int64_t> c(counts, counts + N);
    int64_t total = 0;
    for (int64_t e = 0; e < N; ++e) {
      if (c[e] < 1 || c[e] > D)
        throw std::invalid_argument("flashlb.joint_search: every count must lie in [1, D]");
      total += c[e];
    }
    if (total != P) throw std::invalid_argument("flashlb.joint_search: counts must sum to D * S");
    search.build(c);
  } else {
    std::vector<int64_t> s(slots, slots + P), c(N, 0);
    for (int64_t p = 0; p < P; ++p) {
      if (s[p] < 0 || s[p] >= N)
        throw std::invalid_argument("flashlb.joint_search: slot ids must lie in [0, N)");
      c[s[p]] += 1;
    }
    // A start that leaves an expert without a replica (or with more than D) is no placement:
    // its peak would ignore that expert's load, and a perturbation could not place it back.
    for (int64_t e = 0; e < N; ++e)
      if (c[e] < 1 || c[e] > D)
        throw std::invalid_argument("flashlb.joint_search: init_slots must give every expert 1 to D slots");
    search.set_state(s, c);
  }
  Rng rng(opt.seed);
  SearchResult res = search.run(rng);
  for (int64_t p = 0; p < P; ++p) slots[p] = search.slot_expert_[p];
  for (int64_t e = 0; e < N; ++e) counts[e] = search.counts_[e];
  return res;
}

}  // namespace flashlb
