#pragma once
#include <cstdint>
struct half { uint16_t v; half() = default; template <typename T> half(T) {} template <typename T> operator T() const { return T(); } float ToFloat() const { return 0.0f; } };
