// Joint replica allotment and placement: construction + local search (see joint_search.h).
//
// Objective for one layer, with device loads L[d][t] normalised so each episode averages 1:
//   H = sum_t ew[t] * max_d L[d][t]                    (mean per-episode peak/avg)
//     + smoothing * sum_t ew[t] * mean_d L[d][t]^2      (balance below the peak)
//     + move_penalty * moves                            (slots changed w.r.t. the anchor)
// Moves of the local search:
//   swap  - exchange two replicas between a peak device and any other device;
//   shift - hand one replica of a multi-replica expert to another expert, which changes the
//           replica counts of both and so the load of every device that holds either.
// Every accepted move lowers H strictly, so the search ends; perturbation rounds then kick
// the best placement and search again, keeping the best one found.
#include "joint_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace flashlb {
namespace {

constexpr double kTol = 1e-10;
constexpr int kTop = 4;            // devices remembered per episode, heaviest first
constexpr int kExtraPartners = 3;  // partners tried after the first improving one

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
  Search(int64_t T, int64_t N, int64_t D, int64_t S, const double* w, const double* ew,
         const int64_t* anchor, const SearchOptions& opt)
      : T_(T), N_(N), D_(D), S_(S), P_(D * S), w_(w), ew_(ew), opt_(opt),
        lam_(opt.smoothing / static_cast<double>(D)), mu_(opt.move_penalty),
        se_(D * S), cnt_(N), r_(D * S * T), L_(D * T), has_(D * N), top_i_(kTop * T),
        top_v_(kTop * T), changed_(D, 0), ex_(T), la_(T), lb_(T), nl_(D * T) {
    if (anchor != nullptr) {
      ahas_.assign(D * N, 0);
      for (int64_t p = 0; p < P_; ++p) ahas_[(p / S_) * N_ + anchor[p]] = 1;
    }
    for (int64_t t = 0; t < T_; ++t)
      if (ew_[t] > 0) active_t_.push_back(t);
  }

  // ---------------------------------------------------------------- state
  void set_state(const std::vector<int64_t>& slots, const std::vector<int64_t>& counts) {
    for (int64_t p = 0; p < P_; ++p) se_[p] = slots[p];
    for (int64_t e = 0; e < N_; ++e) cnt_[e] = counts[e];
    rebuild();
  }

  void rebuild() {
    std::fill(L_.begin(), L_.end(), 0.0);
    std::fill(has_.begin(), has_.end(), 0);
    for (int64_t p = 0; p < P_; ++p) {
      int64_t e = se_[p], d = p / S_;
      has_[d * N_ + e] = 1;
      for (int64_t t = 0; t < T_; ++t) {
        r_[p * T_ + t] = w_[t * N_ + e] / static_cast<double>(cnt_[e]);
        L_[d * T_ + t] += r_[p * T_ + t];
      }
    }
    kept_ = 0;
    if (!ahas_.empty())
      for (int64_t i = 0; i < D_ * N_; ++i) kept_ += has_[i] & ahas_[i];
    refresh();
  }

  // Per-episode heaviest devices, F, G and H from the current loads.
  void refresh() {
    F_ = 0.0;
    G_ = 0.0;
    for (int64_t t : active_t_) {
      double v[kTop];
      int64_t id[kTop];
      for (int k = 0; k < kTop; ++k) { v[k] = -1.0; id[k] = -1; }
      double sq = 0.0;
      for (int64_t d = 0; d < D_; ++d) {
        double x = L_[d * T_ + t];
        sq += x * x;
        if (x <= v[kTop - 1]) continue;
        int k = kTop - 1;
        while (k > 0 && x > v[k - 1]) { v[k] = v[k - 1]; id[k] = id[k - 1]; --k; }
        v[k] = x;
        id[k] = d;
      }
      for (int k = 0; k < kTop; ++k) {
        top_v_[kTop * t + k] = v[k] < 0 ? 0.0 : v[k];
        top_i_[kTop * t + k] = id[k];
      }
      F_ += ew_[t] * v[0];
      G_ += ew_[t] * sq;
    }
    H_ = F_ + lam_ * G_ + mu_ * static_cast<double>(P_ - kept_);
  }

  double excl(int64_t t, int64_t a, int64_t b) const {  // max load over devices not a, b
    for (int k = 0; k < kTop; ++k) {
      int64_t i = top_i_[kTop * t + k];
      if (i < 0) return 0.0;
      if (i != a && i != b) return top_v_[kTop * t + k];
    }
    return 0.0;
  }

  bool out_of_time() const {
    return opt_.deadline != std::chrono::steady_clock::time_point::max() &&
           std::chrono::steady_clock::now() > opt_.deadline;
  }

  // ---------------------------------------------------------------- construction
  // Replicas heaviest first, each onto the open device (free slot, expert absent) that adds
  // the least to the weighted sum of squared loads: with one episode the least-loaded device,
  // with several the one whose load is least correlated with the replica's.
  void build(const std::vector<int64_t>& counts) {
    for (int64_t e = 0; e < N_; ++e) cnt_[e] = counts[e];
    std::vector<double> key(N_, 0.0);
    for (int64_t e = 0; e < N_; ++e)
      for (int64_t t : active_t_) key[e] += ew_[t] * w_[t * N_ + e] / cnt_[e];
    std::vector<int64_t> order;
    order.reserve(P_);
    std::vector<int64_t> ex(N_);
    std::iota(ex.begin(), ex.end(), 0);
    std::stable_sort(ex.begin(), ex.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
    for (int64_t e : ex)
      for (int64_t k = 0; k < cnt_[e]; ++k) order.push_back(e);

    std::vector<int64_t> fill(D_, 0);
    std::vector<double> mean(D_, 0.0);
    std::fill(L_.begin(), L_.end(), 0.0);
    std::fill(has_.begin(), has_.end(), 0);
    std::fill(se_.begin(), se_.end(), -1);
    for (int64_t e : order) {
      int64_t best = -1;
      double bc = 0.0, bm = 0.0;
      for (int64_t d = 0; d < D_; ++d) {
        if (fill[d] == S_ || has_[d * N_ + e]) continue;
        double c = 0.0;
        for (int64_t t : active_t_) c += ew_[t] * L_[d * T_ + t] * w_[t * N_ + e];
        if (best < 0 || c < bc - kTol ||
            (c <= bc + kTol && (mean[d] < bm - kTol || (mean[d] <= bm + kTol && fill[d] < fill[best])))) {
          best = d;
          bc = c;
          bm = mean[d];
        }
      }
      if (best < 0) best = repair(e, fill);
      int64_t p = best * S_ + fill[best]++;
      se_[p] = e;
      has_[best * N_ + e] = 1;
      for (int64_t t = 0; t < T_; ++t) {
        double x = w_[t * N_ + e] / cnt_[e];
        L_[best * T_ + t] += x;
        if (ew_[t] > 0) mean[best] += ew_[t] * x;
      }
    }
    rebuild();
  }

  // Every open device already holds e. Some full device d2 lacks e (e has fewer than D
  // replicas placed so far) and holds an expert f that an open device d lacks (d has fewer
  // than S experts): move f to d and free its slot in d2 for e. Returns d2 with one open slot.
  int64_t repair(int64_t e, std::vector<int64_t>& fill) {
    for (int64_t d = 0; d < D_; ++d) {
      if (fill[d] == S_) continue;
      for (int64_t d2 = 0; d2 < D_; ++d2) {
        if (fill[d2] != S_ || has_[d2 * N_ + e]) continue;
        for (int64_t k = 0; k < S_; ++k) {
          int64_t p2 = d2 * S_ + k, f = se_[p2];
          if (has_[d * N_ + f]) continue;
          int64_t p = d * S_ + fill[d]++;
          se_[p] = f;
          has_[d * N_ + f] = 1;
          has_[d2 * N_ + f] = 0;
          for (int64_t t = 0; t < T_; ++t) {
            double x = w_[t * N_ + f] / cnt_[f];
            L_[d * T_ + t] += x;
            L_[d2 * T_ + t] -= x;
          }
          // Slot p2 becomes the last open slot of d2: compact d2 so its open slot is last.
          int64_t last = d2 * S_ + S_ - 1;
          se_[p2] = se_[last];
          se_[last] = -1;
          fill[d2] = S_ - 1;
          return d2;
        }
      }
    }
    throw std::logic_error("flashlb: no feasible device for a replica (internal error)");
  }

  // ---------------------------------------------------------------- moves
  // Source devices: those that are the peak of some weighted episode, most weight first.
  std::vector<int64_t> sources() const {
    std::vector<double> c(D_, 0.0);
    for (int64_t t : active_t_) c[top_i_[kTop * t]] += ew_[t];
    std::vector<int64_t> ds;
    for (int64_t d = 0; d < D_; ++d)
      if (c[d] > 0) ds.push_back(d);
    std::stable_sort(ds.begin(), ds.end(), [&](int64_t a, int64_t b) { return c[a] > c[b]; });
    if (ds.size() > 3) ds.resize(3);
    return ds;
  }

  int64_t anchor_gain(int64_t d, int64_t e) const {
    return ahas_.empty() ? 0 : ahas_[d * N_ + e];
  }

  // Best swap between source device a and partner b; returns its change of H (or 0).
  double best_swap_with(int64_t a, int64_t b, int64_t& bi, int64_t& bj) {
    double best = -kTol;
    const bool prune = mu_ == 0.0;
    for (int64_t t = 0; t < T_; ++t) {
      ex_[t] = ew_[t] > 0 ? excl(t, a, b) : 0.0;
      la_[t] = L_[a * T_ + t];
      lb_[t] = L_[b * T_ + t];
    }
    for (int64_t i = a * S_; i < (a + 1) * S_; ++i) {
      int64_t ei = se_[i];
      if (has_[b * N_ + ei]) continue;
      const double* ri = &r_[i * T_];
      for (int64_t j = b * S_; j < (b + 1) * S_; ++j) {
        int64_t ej = se_[j];
        if (has_[a * N_ + ej]) continue;
        const double* rj = &r_[j * T_];
        // dF >= key[j] - key[i] (a stays the peak of its episodes): no gain in the peaks.
        if (prune && key_[j] >= key_[i]) continue;
        double dF = 0.0, dG = 0.0;
        for (int64_t t = 0; t < T_; ++t) {  // flat loop over all episodes: vectorises
          double dl = rj[t] - ri[t];
          double na = la_[t] + dl, nb = lb_[t] - dl;
          double m = std::max(std::max(na, nb), ex_[t]);
          dF += ew_[t] * (m - top_v_[kTop * t]);
          dG += ew_[t] * dl * (la_[t] - lb_[t] + dl);
        }
        double dk = static_cast<double>(anchor_gain(a, ej) - anchor_gain(a, ei) +
                                        anchor_gain(b, ei) - anchor_gain(b, ej));
        double dH = dF + 2.0 * lam_ * dG - mu_ * dk;
        if (dH < best) {
          best = dH;
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
    if (D_ < 2) return false;
    std::vector<double> room(D_);
    std::vector<int64_t> order(D_);
    for (int64_t a : sources()) {
      // key[p]: load slot p would bring to a in the episodes where a is the peak.
      std::fill(key_.begin(), key_.end(), 0.0);
      for (int64_t t : active_t_) {
        if (top_i_[kTop * t] != a) continue;
        for (int64_t p = 0; p < P_; ++p) key_[p] += ew_[t] * r_[p * T_ + t];
      }
      for (int64_t b = 0; b < D_; ++b) {
        double x = 0.0;
        for (int64_t t : active_t_) x += ew_[t] * (top_v_[kTop * t] - L_[b * T_ + t]);
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
    int64_t a = i / S_, b = j / S_, ei = se_[i], ej = se_[j];
    kept_ += anchor_gain(a, ej) - anchor_gain(a, ei) + anchor_gain(b, ei) - anchor_gain(b, ej);
    has_[a * N_ + ei] = 0;
    has_[b * N_ + ej] = 0;
    has_[a * N_ + ej] = 1;
    has_[b * N_ + ei] = 1;
    std::swap(se_[i], se_[j]);
    for (int64_t t = 0; t < T_; ++t) {
      double dl = r_[j * T_ + t] - r_[i * T_ + t];
      std::swap(r_[i * T_ + t], r_[j * T_ + t]);
      L_[a * T_ + t] += dl;
      L_[b * T_ + t] -= dl;
    }
    refresh();
  }

  // H after slot s changes from its expert x to expert y (replica counts x-1, y+1). Only
  // the devices holding x or y change; the peak of the others comes from the top lists.
  double shift_value(int64_t s, int64_t y) {
    int64_t d = s / S_, x = se_[s];
    double cx = static_cast<double>(cnt_[x]), cy = static_cast<double>(cnt_[y]);
    touched_.clear();
    for (int64_t q = 0; q < D_; ++q) {
      bool hx = has_[q * N_ + x] && q != d, hy = has_[q * N_ + y];
      if (!hx && !hy && q != d) continue;
      touched_.push_back(q);
      changed_[q] = 1;
      for (int64_t t = 0; t < T_; ++t) {
        double v = L_[q * T_ + t];
        if (hx) v += w_[t * N_ + x] * (1.0 / (cx - 1.0) - 1.0 / cx);
        if (hy) v += w_[t * N_ + y] * (1.0 / (cy + 1.0) - 1.0 / cy);
        if (q == d) v += w_[t * N_ + y] / (cy + 1.0) - w_[t * N_ + x] / cx;
        nl_[q * T_ + t] = v;
      }
    }
    double f = 0.0, dg = 0.0;
    for (int64_t t : active_t_) {
      double m = -1.0;
      for (int k = 0; k < kTop && m < 0; ++k) {
        int64_t i = top_i_[kTop * t + k];
        if (i < 0) m = 0.0;
        else if (!changed_[i]) m = top_v_[kTop * t + k];
      }
      if (m < 0) {  // every remembered device changed: scan the others
        m = 0.0;
        for (int64_t q = 0; q < D_; ++q)
          if (!changed_[q]) m = std::max(m, L_[q * T_ + t]);
      }
      double g = 0.0;
      for (int64_t q : touched_) {
        double v = nl_[q * T_ + t], o = L_[q * T_ + t];
        m = std::max(m, v);
        g += v * v - o * o;
      }
      f += ew_[t] * m;
      dg += ew_[t] * g;
    }
    for (int64_t q : touched_) changed_[q] = 0;
    int64_t kept = kept_ - anchor_gain(d, x) + anchor_gain(d, y);
    return f + lam_ * (G_ + dg) + mu_ * static_cast<double>(P_ - kept);
  }

  bool shift_valid(int64_t s, int64_t y) const {
    int64_t x = se_[s];
    return x != y && cnt_[x] >= 2 && cnt_[y] < D_ && !has_[(s / S_) * N_ + y];
  }

  bool shift_step() {
    std::vector<int64_t> src = sources();
    if (src.empty()) return false;
    int64_t a = src[0];
    double best = H_ - kTol;
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
    for (int64_t i = a * S_; i < (a + 1) * S_; ++i)
      for (int64_t s = 0; s < P_; ++s) consider(s, se_[i]);
    // (B) a multi-replica slot on the peak device handed to any other expert.
    for (int64_t s = a * S_; s < (a + 1) * S_; ++s)
      if (cnt_[se_[s]] >= 2)
        for (int64_t y = 0; y < N_; ++y) consider(s, y);
    if (bs < 0) return false;
    apply_shift(bs, by);
    return true;
  }

  void apply_shift(int64_t s, int64_t y) {
    int64_t x = se_[s];
    se_[s] = y;
    cnt_[x] -= 1;
    cnt_[y] += 1;
    rebuild();
  }

  void local_search() {
    int64_t guard = 0, limit = 64 * P_ + 1000;
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
      std::vector<int64_t> c(cnt_);
      bool changed = false;
      for (int64_t n = 1 + rng.below(2); n > 0; --n) {
        for (int tries = 0; tries < 32; ++tries) {
          int64_t x = rng.below(N_), y = rng.below(N_);
          if (x == y || c[x] < 2 || c[y] >= D_) continue;
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
    if (D_ < 2) return;
    std::vector<int64_t> src = sources();
    for (int64_t n = 1 + rng.below(3); n > 0; --n) {
      for (int tries = 0; tries < 32; ++tries) {
        int64_t a = (!src.empty() && rng.below(2) == 0) ? src[rng.below(src.size())] : rng.below(D_);
        int64_t b = rng.below(D_);
        if (a == b) continue;
        int64_t i = a * S_ + rng.below(S_), j = b * S_ + rng.below(S_);
        if (se_[i] == se_[j] || has_[b * N_ + se_[i]] || has_[a * N_ + se_[j]]) continue;
        apply_swap(i, j);
        break;
      }
    }
  }

  SearchResult run(Rng& rng) {
    local_search();
    std::vector<int64_t> best_se(se_), best_cnt(cnt_);
    double best_h = H_;
    for (int64_t round = 0; round < opt_.perturb_rounds && !out_of_time(); ++round) {
      perturb(rng);
      local_search();
      if (H_ < best_h - kTol) {
        best_h = H_;
        best_se = se_;
        best_cnt = cnt_;
      } else {
        set_state(best_se, best_cnt);
      }
    }
    if (H_ > best_h + kTol) set_state(best_se, best_cnt);
    return {F_, H_, ahas_.empty() ? 0 : P_ - kept_};
  }

  // Declared in the order of the constructor's initialiser list.
  int64_t T_, N_, D_, S_, P_;
  const double* w_;
  const double* ew_;
  SearchOptions opt_;
  double lam_, mu_;
  std::vector<int64_t> se_, cnt_;  // expert of each slot, replicas of each expert
  std::vector<double> r_, L_;      // replica load per slot and episode, device loads
  std::vector<uint8_t> has_;       // [D * N] device holds expert
  std::vector<int64_t> top_i_;
  std::vector<double> top_v_;
  std::vector<uint8_t> changed_;       // scratch of shift_value: devices it changes
  std::vector<double> ex_, la_, lb_;   // scratch of best_swap_with, [T]
  std::vector<double> nl_;             // scratch of shift_value: new loads [D * T]
  std::vector<int64_t> touched_;
  std::vector<double> key_ = std::vector<double>(P_);  // scratch of swap_step, [P]
  std::vector<uint8_t> ahas_;      // [D * N] anchor device held expert
  std::vector<int64_t> active_t_;  // episodes with positive weight
  int64_t kept_ = 0;
  double F_ = 0.0, G_ = 0.0, H_ = 0.0;

};

}  // namespace

SearchResult joint_search(int64_t T, int64_t N, int64_t D, int64_t S, const double* w,
                          const double* ew, int64_t* counts, int64_t* slots,
                          const int64_t* anchor, const SearchOptions& opt) {
  const int64_t P = D * S;
  if (T < 1 || N < 1 || D < 1 || S < 1 || S > N || P < N)
    throw std::invalid_argument("flashlb.joint_search: sizes need T, N, D, S >= 1, S <= N <= D * S");
  Search search(T, N, D, S, w, ew, anchor, opt);
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
    search.set_state(s, c);
  }
  Rng rng(opt.seed);
  SearchResult res = search.run(rng);
  for (int64_t p = 0; p < P; ++p) slots[p] = search.se_[p];
  for (int64_t e = 0; e < N; ++e) counts[e] = search.cnt_[e];
  return res;
}

}  // namespace flashlb
