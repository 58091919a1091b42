#pragma once
#include <cstdint>
struct bfloat16_t { uint16_t v; bfloat16_t() = default; template <typename T> bfloat16_t(T) {} template <typename T> operator T() const { return T(); } float ToFloat() const { return 0.0f; } };
