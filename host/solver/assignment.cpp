// Hungarian method with potentials (shortest augmenting paths), on costs = -score.
#include "assignment.h"

#include <limits>
#include <stdexcept>
#include <vector>

namespace flashlb {

void max_assignment(int64_t n, const double* score, int64_t* out) {
  const double inf = std::numeric_limits<double>::infinity();
  // 1-based arrays: column 0 is the virtual start of each augmenting path.
  std::vector<double> u(n + 1, 0.0), v(n + 1, 0.0), minv(n + 1);
  std::vector<int64_t> match(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int64_t i = 1; i <= n; ++i) {
    match[0] = i;
    int64_t j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int64_t i0 = match[j0];
      double delta = inf;
      int64_t j1 = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double cur = -score[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      // No finite reduced cost left (NaN or infinite scores): stop instead of looping forever.
      if (j1 == 0) throw std::invalid_argument("flashlb.max_assignment: scores must be finite");
      j0 = j1;
    } while (match[j0] != 0);
    do {
      const int64_t j1 = way[j0];
      match[j0] = match[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  for (int64_t j = 1; j <= n; ++j) out[match[j] - 1] = j - 1;
}

}  // namespace flashlb
