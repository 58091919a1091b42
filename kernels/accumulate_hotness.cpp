// Ascend C kernel of torch.ops.flashlb.accumulate_hotness (AI Core, vector cores).
//
// Each core counts its chunk of topk_ids (the split comes from host/include/flashlb/tiling.h)
// into a private histogram in the unified buffer, then adds the histogram to hotness[layer]
// in global memory with the atomic-add mode of DataCopyPad, so cores never race on a count.
// Negative ids are padding. Ids >= N are never added to hotness: they are counted in the
// histogram's out-of-range bin, which is added to `outOfRange` when the launcher passes one
// (it does under debug checks, and raises when the count is not zero).
// The CPU kernel in host/ops/hotness.cpp is the reference this kernel must equal; the CPU
// twin (kernels/twin/) runs this file unchanged against it.
//
// Synchronisation (NPU architecture 2201, cce-auto-sync on, the default of <<<>>> builds):
// the compiler orders V -> S, MTE2 -> S and S -> MTE2/MTE3 around GetValue / SetValue, so the
// scalar loop needs no flag. V -> MTE3 is not automatic: Duplicate's zeros must land before
// the histogram is copied out, even when no id of the chunk wrote to it (all padding).
#include "kernel_operator.h"

#include "flashlb/tiling.h"

namespace {

template <typename IdT, typename CountT>
class HistogramKernel {
 public:
  __aicore__ inline void Init(GM_ADDR ids, GM_ADDR row, GM_ADDR outOfRange, int64_t numIds,
                              int64_t numExperts, int64_t perCore, int64_t tile, int64_t oobBin,
                              int64_t histLen) {
    numExperts_ = numExperts;
    tile_ = tile;
    oobBin_ = oobBin;
    histLen_ = histLen;
    countOutOfRange_ = outOfRange != nullptr;
    begin_ = AscendC::GetBlockIdx() * perCore;
    end_ = begin_ + perCore < numIds ? begin_ + perCore : numIds;
    idsGm_.SetGlobalBuffer((__gm__ IdT *)ids, numIds);
    rowGm_.SetGlobalBuffer((__gm__ CountT *)row, numExperts);
    if (countOutOfRange_) oobGm_.SetGlobalBuffer((__gm__ CountT *)outOfRange, 1);
    pipe_.InitBuffer(idBuf_, tile * sizeof(IdT));
    pipe_.InitBuffer(histBuf_, histLen * sizeof(CountT));
  }

  __aicore__ inline void Process() {
    AscendC::LocalTensor<CountT> hist = histBuf_.Get<CountT>();
    AscendC::Duplicate(hist, static_cast<CountT>(0), static_cast<int32_t>(histLen_));
    for (int64_t off = begin_; off < end_; off += tile_) {
      const int64_t n = end_ - off < tile_ ? end_ - off : tile_;
      AscendC::LocalTensor<IdT> ids = idBuf_.Get<IdT>();
      // The last tile may end inside a 32-byte block: copy exactly n ids.
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(IdT)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<IdT> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(ids, idsGm_[off], copy, pad);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t id = static_cast<int64_t>(ids.GetValue(i));
        if (id < 0) continue;  // padding
        const int64_t bin = id < numExperts_ ? id : oobBin_;
        hist.SetValue(bin, hist.GetValue(bin) + static_cast<CountT>(1));
      }
    }
    Await<AscendC::HardEvent::V_MTE3>();
    // hotness[layer] += hist[0, N); outOfRange += hist[oobBin] (a block-aligned single entry).
    AscendC::SetAtomicAdd<CountT>();
    AscendC::DataCopyExtParams out{1, static_cast<uint32_t>(numExperts_ * sizeof(CountT)), 0, 0, 0};
    AscendC::DataCopyPad(rowGm_, hist, out);
    if (countOutOfRange_) {
      AscendC::DataCopyExtParams one{1, static_cast<uint32_t>(sizeof(CountT)), 0, 0, 0};
      AscendC::DataCopyPad(oobGm_, hist[oobBin_], one);
    }
    AscendC::SetAtomicNone();
  }

 private:
  // Orders every earlier operation of the event's source pipe before the next one of its
  // destination pipe.
  template <AscendC::HardEvent E>
  __aicore__ inline void Await() {
    const int32_t id = static_cast<int32_t>(pipe_.FetchEventID(E));
    AscendC::SetFlag<E>(id);
    AscendC::WaitFlag<E>(id);
  }

  AscendC::TPipe pipe_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> idBuf_, histBuf_;
  AscendC::GlobalTensor<IdT> idsGm_;
  AscendC::GlobalTensor<CountT> rowGm_, oobGm_;
  int64_t numExperts_ = 0, tile_ = 0, oobBin_ = 0, histLen_ = 0, begin_ = 0, end_ = 0;
  bool countOutOfRange_ = false;
};

}  // namespace

// One entry point per (id type, count type); the launches are in kernels/launch.cpp.
#define FLASHLB_HISTOGRAM_KERNEL(NAME, IdT, CountT)                                                 \
  extern "C" __global__ __aicore__ void NAME(GM_ADDR ids, GM_ADDR row, GM_ADDR outOfRange,         \
                                             int64_t numIds, int64_t numExperts, int64_t perCore,  \
                                             int64_t tile, int64_t oobBin, int64_t histLen) {      \
    HistogramKernel<IdT, CountT> op;                                                              \
    op.Init(ids, row, outOfRange, numIds, numExperts, perCore, tile, oobBin, histLen);            \
    op.Process();                                                                                 \
  }

FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i32_i32, int32_t, int32_t)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i64_i32, int64_t, int32_t)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i32_f32, int32_t, float)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i64_f32, int64_t, float)
