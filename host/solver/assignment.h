// Maximum-weight perfect matching of a square matrix (the assignment problem).
#pragma once

#include <cstdint>

namespace flashlb {

// score: [n * n] row-major; out: [n], row i matched to column out[i]. O(n^3).
void max_assignment(int64_t n, const double* score, int64_t* out);

}  // namespace flashlb
