// CPU twin of the Ascend C API subset that kernels/*.cpp use, so that those files compile
// unchanged with g++ and run on the CPU (the practice of CANN's own CPU-debug mode), with the
// checks a real AI Core would enforce or silently get wrong:
// - one std::thread per block (GetBlockIdx), each with its own unified buffer of the real
//   size (kUbCapacity); InitBuffer past it, or a copy / vector operand off a 32-byte boundary
//   or outside its buffer, is a fault;
// - global memory only through SetGlobalBuffer's range; pad bytes of DataCopyPad are poisoned
//   (0x7F) so that a kernel reading them gets garbage, not zeros;
// - atomic add for copies out under SetAtomicAdd;
// - a pipe-hazard tracker: every access of PIPE_S / PIPE_V / PIPE_MTE2 / PIPE_MTE3 to the
//   unified buffer or global memory is recorded, and a later access from another pipe that
//   conflicts with it (one of them writes) must be ordered by PipeBarrier<PIPE_ALL>, a
//   SetFlag / WaitFlag pair (transitively), or a pair the 2201 compiler synchronises by
//   itself (cce-auto-sync: V -> V, V <-> S, MTE2 <-> S, MTE3 <-> S). Two copies on the same
//   MTE pipe with overlapping addresses also need one. Anything else is a fault naming the
//   pair, e.g. "unsynchronised V -> MTE2".
// Faults are thrown as flashlb::twin::Fault and reported by twin::launch.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "flashlb/tiling.h"

#define __aicore__
#define __global__
#define __gm__
using GM_ADDR = uint8_t*;

enum pipe_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };
enum event_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };

namespace AscendC {
enum class HardEvent { MTE2_V, V_MTE2, MTE3_V, V_MTE3, MTE2_MTE3, MTE3_MTE2, S_V, V_S, MTE2_S, S_MTE2, MTE3_S, S_MTE3 };
enum class TPosition { GM, VECIN, VECOUT, VECCALC };
}  // namespace AscendC

namespace flashlb::twin {

struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The four pipes of a vector core that the kernels use, in tracker order.
enum Pipe { S = 0, V = 1, MTE2 = 2, MTE3 = 3, kPipes = 4 };
inline const char* pipe_name(int p) {
  static const char* names[] = {"S", "V", "MTE2", "MTE3"};
  return names[p];
}

// cce-auto-sync on NPU architecture 2201 (the Ascend C docs' table for AIV): src -> dst pairs
// the compiler synchronises by itself.
constexpr bool kAutoSync[kPipes][kPipes] = {
    /* S    -> */ {true, true, true, true},
    /* V    -> */ {true, true, false, false},
    /* MTE2 -> */ {true, false, false, false},
    /* MTE3 -> */ {true, false, false, false},
};

inline void event_pipes(AscendC::HardEvent e, int* src, int* dst) {
  using H = AscendC::HardEvent;
  switch (e) {
    case H::MTE2_V: *src = MTE2; *dst = V; return;
    case H::V_MTE2: *src = V; *dst = MTE2; return;
    case H::MTE3_V: *src = MTE3; *dst = V; return;
    case H::V_MTE3: *src = V; *dst = MTE3; return;
    case H::MTE2_MTE3: *src = MTE2; *dst = MTE3; return;
    case H::MTE3_MTE2: *src = MTE3; *dst = MTE2; return;
    case H::S_V: *src = S; *dst = V; return;
    case H::V_S: *src = V; *dst = S; return;
    case H::MTE2_S: *src = MTE2; *dst = S; return;
    case H::S_MTE2: *src = S; *dst = MTE2; return;
    case H::MTE3_S: *src = MTE3; *dst = S; return;
    case H::S_MTE3: *src = S; *dst = MTE3; return;
  }
}

using Clock = std::array<int64_t, kPipes>;

struct Access {
  bool ub;          // unified buffer (else global memory)
  uintptr_t lo, hi;
  int pipe;
  int64_t seq;
  bool write;
};

// What one vector core knows: its unified buffer and the order of its pipes.
class Core {
 public:
  Core(int64_t idx, int64_t num) : idx(idx), num(num), ub(flashlb::kUbCapacity) {
    std::memset(ub.data(), 0x7F, ub.size());
    for (auto& k : know) k.fill(-1);
  }

  int64_t idx, num;
  std::vector<uint8_t> ub;
  int64_t ub_used = 0;
  bool atomic_add = false;

  uint8_t* alloc(int64_t bytes) {
    const int64_t at = ub_used;
    const int64_t size = flashlb::round_up(bytes, flashlb::kBlockBytes);
    if (bytes < 0 || at + size > static_cast<int64_t>(ub.size()))
      throw Fault("InitBuffer of " + std::to_string(bytes) + " bytes: the unified buffer has " +
                  std::to_string(ub.size() - at) + " of its " + std::to_string(ub.size()) + " bytes left");
    ub_used = at + size;
    return ub.data() + at;
  }

  void check_ub(const void* p, int64_t bytes, const char* what) const {
    const auto* b = static_cast<const uint8_t*>(p);
    if (b < ub.data() || b + bytes > ub.data() + ub.size())
      throw Fault(std::string(what) + ": unified-buffer operand out of the buffer");
    if ((b - ub.data()) % flashlb::kBlockBytes != 0)
      throw Fault(std::string(what) + ": unified-buffer address not 32-byte aligned (offset " +
                  std::to_string(b - ub.data()) + ")");
  }

  // Records an access of `pipe`; throws if it conflicts with an unordered earlier one.
  void access(int pipe, bool is_ub, const void* p, int64_t bytes, bool write, const char* what) {
    if (bytes <= 0) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p), hi = lo + static_cast<uintptr_t>(bytes);
    for (const Access& a : log) {
      if (a.ub != is_ub || a.hi <= lo || hi <= a.lo || (!a.write && !write)) continue;
      if (a.pipe == pipe && (pipe == S || pipe == V)) continue;  // in order within the pipe
      if (know[pipe][a.pipe] >= a.seq) continue;                 // ordered by a barrier or flag
      if (a.pipe != pipe && kAutoSync[a.pipe][pipe]) {           // the compiler's own flag
        join(pipe, a.pipe, a.seq);
        continue;
      }
      throw Fault(std::string("unsynchronised ") + pipe_name(a.pipe) + " -> " + pipe_name(pipe) + " on " +
                  (is_ub ? "unified-buffer" : "global-memory") + " bytes (" + (a.write ? "write" : "read") +
                  " then " + (write ? "write" : "read") + ") at " + what);
    }
    const int64_t seq = ++issued[pipe];
    know[pipe][pipe] = seq;
    // Drop what this access supersedes (same pipe, inside its range, no stronger) and what
    // every pipe already knows to be complete.
    log.erase(std::remove_if(log.begin(), log.end(),
                             [&](const Access& a) {
                               if (a.pipe == pipe && a.ub == is_ub && lo <= a.lo && a.hi <= hi && (write || !a.write))
                                 return true;
                               for (int q = 0; q < kPipes; ++q)
                                 if (know[q][a.pipe] < a.seq) return false;
                               return true;
                             }),
              log.end());
    log.push_back(Access{is_ub, lo, hi, pipe, seq, write});
  }

  void barrier_all() {
    for (auto& k : know) k = issued;
    log.clear();
  }

  void set_flag(AscendC::HardEvent e, int32_t id) {
    int src = 0, dst = 0;
    event_pipes(e, &src, &dst);
    auto key = std::make_pair(static_cast<int>(e), id);
    if (flags.count(key)) throw Fault("SetFlag twice on one event without a WaitFlag between");
    flags[key] = know[src];
    flags[key][src] = issued[src];
  }

  void wait_flag(AscendC::HardEvent e, int32_t id) {
    int src = 0, dst = 0;
    event_pipes(e, &src, &dst);
    auto it = flags.find(std::make_pair(static_cast<int>(e), id));
    if (it == flags.end()) throw Fault("WaitFlag without a SetFlag: the core would hang");
    for (int q = 0; q < kPipes; ++q) know[dst][q] = std::max(know[dst][q], it->second[q]);
    flags.erase(it);
  }

  void finish() const {
    if (!flags.empty()) throw Fault("the kernel ends with a SetFlag that no WaitFlag consumed");
  }

 private:
  // pipe learns that `src` completed up to seq, and what src knew then (a flag's transitivity).
  void join(int pipe, int src, int64_t seq) {
    for (int q = 0; q < kPipes; ++q) know[pipe][q] = std::max(know[pipe][q], know[src][q]);
    know[pipe][src] = std::max(know[pipe][src], seq);
  }

  Clock issued{};                 // operations issued per pipe
  std::array<Clock, kPipes> know;  // know[p][q]: q's operations complete before p's next
  std::vector<Access> log;
  std::map<std::pair<int, int32_t>, Clock> flags;
};

inline thread_local Core* current = nullptr;

inline Core& core() {
  if (current == nullptr) throw Fault("Ascend C call outside twin::launch");
  return *current;
}

// Runs `kernel` on `blocks` cores, one thread each; returns "" or the first fault, with its core.
template <typename F>
std::string launch(int64_t blocks, F kernel) {
  std::vector<std::string> faults(blocks);
  std::vector<std::thread> threads;
  for (int64_t b = 0; b < blocks; ++b) {
    threads.emplace_back([&, b] {
      Core c(b, blocks);
      current = &c;
      try {
        kernel();
        c.finish();
      } catch (const std::exception& e) {
        faults[b] = "core " + std::to_string(b) + ": " + e.what();
      }
      current = nullptr;
    });
  }
  for (auto& t : threads) t.join();
  for (auto& f : faults)
    if (!f.empty()) return f;
  return "";
}

}  // namespace flashlb::twin

namespace AscendC {

inline int64_t GetBlockIdx() { return flashlb::twin::core().idx; }
inline int64_t GetBlockNum() { return flashlb::twin::core().num; }

template <typename T>
class GlobalTensor {
 public:
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t size) {
    base_ = buffer;
    size_ = size;
    offset_ = 0;
  }
  GlobalTensor operator[](uint64_t offset) const {
    GlobalTensor t = *this;
    t.offset_ += offset;
    return t;
  }
  // The elements [offset_, offset_ + n) as a pointer, after checking they are in the buffer.
  T* span(uint64_t n, const char* what) const {
    if (base_ == nullptr) throw flashlb::twin::Fault(std::string(what) + ": GlobalTensor without SetGlobalBuffer");
    if (offset_ + n > size_)
      throw flashlb::twin::Fault(std::string(what) + ": global memory [" + std::to_string(offset_) + ", " +
                                 std::to_string(offset_ + n) + ") outside SetGlobalBuffer's " +
                                 std::to_string(size_) + " elements");
    return base_ + offset_;
  }

 private:
  T* base_ = nullptr;
  uint64_t size_ = 0, offset_ = 0;
};

template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  LocalTensor(T* data, uint32_t size) : data_(data), size_(size) {}
  LocalTensor operator[](uint32_t offset) const {
    if (offset > size_) throw flashlb::twin::Fault("LocalTensor[]: offset past the buffer");
    return LocalTensor(data_ + offset, size_ - offset);
  }
  T GetValue(uint32_t i) const {
    check(i);
    flashlb::twin::core().access(flashlb::twin::S, true, data_ + i, sizeof(T), false, "GetValue");
    return data_[i];
  }
  void SetValue(uint32_t i, T v) const {
    check(i);
    flashlb::twin::core().access(flashlb::twin::S, true, data_ + i, sizeof(T), true, "SetValue");
    data_[i] = v;
  }
  // The first n elements, checked as a vector or copy operand.
  T* span(int64_t n, const char* what) const {
    if (n < 0 || n > size_) throw flashlb::twin::Fault(std::string(what) + ": count past the LocalTensor");
    flashlb::twin::core().check_ub(data_, n * static_cast<int64_t>(sizeof(T)), what);
    return data_;
  }
  uint32_t GetSize() const { return size_; }

 private:
  void check(uint32_t i) const {
    if (i >= size_) throw flashlb::twin::Fault("LocalTensor element " + std::to_string(i) + " past the buffer");
  }
  T* data_ = nullptr;
  uint32_t size_ = 0;
};

template <TPosition P>
class TBuf {
 public:
  template <typename T>
  LocalTensor<T> Get() const {
    if (data_ == nullptr) throw flashlb::twin::Fault("TBuf::Get before InitBuffer");
    return LocalTensor<T>(reinterpret_cast<T*>(data_), static_cast<uint32_t>(bytes_ / sizeof(T)));
  }
  uint8_t* data_ = nullptr;
  uint32_t bytes_ = 0;
};

class TPipe {
 public:
  template <TPosition P>
  void InitBuffer(TBuf<P>& buf, uint32_t bytes) {
    buf.data_ = flashlb::twin::core().alloc(bytes);
    buf.bytes_ = bytes;
  }
  int8_t FetchEventID(HardEvent) { return 0; }
};

struct DataCopyExtParams {
  uint16_t blockCount;
  uint32_t blockLen;  // bytes
  uint32_t srcStride;
  uint32_t dstStride;
  uint32_t rsv;
};

template <typename T>
struct DataCopyPadExtParams {
  bool isPad;
  uint8_t leftPadding;
  uint8_t rightPadding;
  T paddingValue;
};

inline void check_single_block(const DataCopyExtParams& p, const char* what) {
  if (p.blockCount != 1 || p.srcStride != 0 || p.dstStride != 0)
    throw flashlb::twin::Fault(std::string(what) + ": the twin models one contiguous block only");
}

// GM -> UB (PIPE_MTE2): blockLen bytes, then the rest of the last 32-byte block is padding.
template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                 const DataCopyPadExtParams<T>& pad) {
  check_single_block(p, "DataCopyPad GM->UB");
  if (pad.isPad) throw flashlb::twin::Fault("DataCopyPad GM->UB: padding values are not modelled");
  if (p.blockLen % sizeof(T) != 0) throw flashlb::twin::Fault("DataCopyPad GM->UB: blockLen not whole elements");
  const int64_t n = p.blockLen / sizeof(T);
  const int64_t padded = flashlb::round_up(p.blockLen, flashlb::kBlockBytes);
  auto& c = flashlb::twin::core();
  T* d = dst.span(padded / static_cast<int64_t>(sizeof(T)), "DataCopyPad GM->UB");
  const T* s = src.span(n, "DataCopyPad GM->UB");
  c.access(flashlb::twin::MTE2, false, s, p.blockLen, false, "DataCopyPad GM->UB (source)");
  c.access(flashlb::twin::MTE2, true, d, padded, true, "DataCopyPad GM->UB");
  std::memcpy(d, s, p.blockLen);
  std::memset(reinterpret_cast<uint8_t*>(d) + p.blockLen, 0x7F, padded - p.blockLen);  // poison
}

// UB -> GM (PIPE_MTE3): blockLen bytes; added element by element under SetAtomicAdd.
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p) {
  check_single_block(p, "DataCopyPad UB->GM");
  if (p.blockLen % sizeof(T) != 0) throw flashlb::twin::Fault("DataCopyPad UB->GM: blockLen not whole elements");
  const int64_t n = p.blockLen / sizeof(T);
  auto& c = flashlb::twin::core();
  const T* s = src.span(flashlb::ceil_div(p.blockLen, sizeof(T)), "DataCopyPad UB->GM");
  T* d = dst.span(n, "DataCopyPad UB->GM");
  c.access(flashlb::twin::MTE3, true, s, flashlb::round_up(p.blockLen, flashlb::kBlockBytes), false,
           "DataCopyPad UB->GM (source)");
  c.access(flashlb::twin::MTE3, false, d, p.blockLen, true, "DataCopyPad UB->GM");
  if (c.atomic_add) {
    for (int64_t i = 0; i < n; ++i) std::atomic_ref<T>(d[i]).fetch_add(s[i]);
  } else {
    std::memcpy(d, s, p.blockLen);
  }
}

template <typename T>
void SetAtomicAdd() {
  flashlb::twin::core().atomic_add = true;
}
inline void SetAtomicNone() { flashlb::twin::core().atomic_add = false; }

template <pipe_t P>
void PipeBarrier() {
  static_assert(P == PIPE_ALL || P == PIPE_V || P == PIPE_S || P == PIPE_MTE2 || P == PIPE_MTE3, "pipe");
  if (P == PIPE_ALL) flashlb::twin::core().barrier_all();
  // A barrier on one pipe orders that pipe with itself, which the tracker assumes anyway.
}

template <HardEvent E>
void SetFlag(int32_t id) {
  flashlb::twin::core().set_flag(E, id);
}
template <HardEvent E>
void WaitFlag(int32_t id) {
  flashlb::twin::core().wait_flag(E, id);
}

// Vector operations (PIPE_V) over the first `count` elements.
template <typename T>
void Duplicate(const LocalTensor<T>& dst, const T& value, const int32_t& count) {
  T* d = dst.span(count, "Duplicate");
  flashlb::twin::core().access(flashlb::twin::V, true, d, count * sizeof(T), true, "Duplicate");
  std::fill(d, d + count, value);
}

template <typename T, typename F>
void binary(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, int32_t count,
            const char* what, F f) {
  auto& c = flashlb::twin::core();
  T* d = dst.span(count, what);
  const T* x = a.span(count, what);
  const T* y = b.span(count, what);
  c.access(flashlb::twin::V, true, x, count * sizeof(T), false, what);
  c.access(flashlb::twin::V, true, y, count * sizeof(T), false, what);
  c.access(flashlb::twin::V, true, d, count * sizeof(T), true, what);
  for (int32_t i = 0; i < count; ++i) d[i] = f(x[i], y[i]);
}

template <typename T>
void Add(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& n) {
  binary(d, a, b, n, "Add", [](T x, T y) { return static_cast<T>(x + y); });
}
template <typename T>
void Sub(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& n) {
  binary(d, a, b, n, "Sub", [](T x, T y) { return static_cast<T>(x - y); });
}
template <typename T>
void Mul(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& n) {
  binary(d, a, b, n, "Mul", [](T x, T y) { return static_cast<T>(x * y); });
}
template <typename T>
void Div(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& n) {
  binary(d, a, b, n, "Div", [](T x, T y) { return static_cast<T>(x / y); });
}
template <typename T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  auto& c = flashlb::twin::core();
  T* d = dst.span(count, "Muls");
  const T* s = src.span(count, "Muls");
  c.access(flashlb::twin::V, true, s, count * sizeof(T), false, "Muls");
  c.access(flashlb::twin::V, true, d, count * sizeof(T), true, "Muls");
  for (int32_t i = 0; i < count; ++i) d[i] = static_cast<T>(s[i] * scalar);
}

}  // namespace AscendC
