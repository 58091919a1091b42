// Ascend C kernel of torch.ops.flashlb.accumulate_hotness (AI Core, vector cores).
//
// Each core counts its chunk of topk_ids (the split comes from host/include/flashlb/tiling.h)
// into a private histogram in the unified buffer, then adds the histogram to hotness[layer]
// in global memory with the atomic-add mode of DataCopy, so cores never race on a count.
// Negative ids are padding; ids >= N were rejected on the host (debug checks) or are skipped.
// The CPU kernel in host/ops/hotness.cpp is the reference this kernel must equal.
#include "kernel_operator.h"

#include "flashlb/tiling.h"

namespace {

template <typename IdT, typename CountT>
class HistogramKernel {
 public:
  __aicore__ inline void Init(GM_ADDR ids, GM_ADDR row, int64_t numIds, int64_t numExperts,
                              int64_t perCore, int64_t tile, int64_t histLen) {
    numExperts_ = numExperts;
    tile_ = tile;
    histLen_ = histLen;
    begin_ = AscendC::GetBlockIdx() * perCore;
    end_ = begin_ + perCore < numIds ? begin_ + perCore : numIds;
    idsGm_.SetGlobalBuffer((__gm__ IdT *)ids, numIds);
    rowGm_.SetGlobalBuffer((__gm__ CountT *)row, numExperts);
    pipe_.InitBuffer(idBuf_, tile * sizeof(IdT));
    pipe_.InitBuffer(histBuf_, histLen * sizeof(CountT));
  }

  __aicore__ inline void Process() {
    AscendC::LocalTensor<CountT> hist = histBuf_.Get<CountT>();
    AscendC::Duplicate(hist, static_cast<CountT>(0), static_cast<int32_t>(histLen_));
    AscendC::PipeBarrier<PIPE_ALL>();
    for (int64_t off = begin_; off < end_; off += tile_) {
      const int64_t n = end_ - off < tile_ ? end_ - off : tile_;
      AscendC::LocalTensor<IdT> ids = idBuf_.Get<IdT>();
      // The last tile may end inside a 32-byte block: copy exactly n ids.
      AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(IdT)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<IdT> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(ids, idsGm_[off], copy, pad);
      AscendC::PipeBarrier<PIPE_ALL>();  // the scalar unit reads what MTE2 wrote
      for (int64_t i = 0; i < n; ++i) {
        const int64_t id = static_cast<int64_t>(ids.GetValue(i));
        if (id >= 0 && id < numExperts_) hist.SetValue(id, hist.GetValue(id) + static_cast<CountT>(1));
      }
      AscendC::PipeBarrier<PIPE_ALL>();
    }
    // hotness[layer] += hist, exactly N entries (the histogram is padded to whole blocks).
    AscendC::SetAtomicAdd<CountT>();
    AscendC::DataCopyExtParams out{1, static_cast<uint32_t>(numExperts_ * sizeof(CountT)), 0, 0, 0};
    AscendC::DataCopyPad(rowGm_, hist, out);
    AscendC::SetAtomicNone();
  }

 private:
  AscendC::TPipe pipe_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> idBuf_, histBuf_;
  AscendC::GlobalTensor<IdT> idsGm_;
  AscendC::GlobalTensor<CountT> rowGm_;
  int64_t numExperts_ = 0, tile_ = 0, histLen_ = 0, begin_ = 0, end_ = 0;
};

}  // namespace

#define FLASHLB_HISTOGRAM_KERNEL(NAME, IdT, CountT)                                               \
  extern "C" __global__ __aicore__ void NAME(GM_ADDR ids, GM_ADDR row, int64_t numIds,          \
                                             int64_t numExperts, int64_t perCore, int64_t tile, \
                                             int64_t histLen) {                                 \
    HistogramKernel<IdT, CountT> op;                                                            \
    op.Init(ids, row, numIds, numExperts, perCore, tile, histLen);                              \
    op.Process();                                                                               \
  }

FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i32_i32, int32_t, int32_t)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i64_i32, int64_t, int32_t)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i32_f32, int32_t, float)
FLASHLB_HISTOGRAM_KERNEL(flashlb_hist_i64_f32, int64_t, float)

namespace flashlb {

// Host side of the launch, compiled by the Ascend C toolchain with the kernels.
// id_bytes / count_bytes pick the instantiation: (4|8) x (4 int32 | 5 float32).
void launch_accumulate_hotness(void* stream, void* ids, void* row, int id_bytes, bool float_counts,
                               const HistogramTiling& t) {
  const uint32_t blocks = static_cast<uint32_t>(t.cores);
  if (id_bytes == 4 && !float_counts)
    flashlb_hist_i32_i32<<<blocks, nullptr, stream>>>((GM_ADDR)ids, (GM_ADDR)row, t.num_ids, t.num_experts, t.per_core, t.tile, t.hist_len);
  else if (id_bytes == 8 && !float_counts)
    flashlb_hist_i64_i32<<<blocks, nullptr, stream>>>((GM_ADDR)ids, (GM_ADDR)row, t.num_ids, t.num_experts, t.per_core, t.tile, t.hist_len);
  else if (id_bytes == 4)
    flashlb_hist_i32_f32<<<blocks, nullptr, stream>>>((GM_ADDR)ids, (GM_ADDR)row, t.num_ids, t.num_experts, t.per_core, t.tile, t.hist_len);
  else
    flashlb_hist_i64_f32<<<blocks, nullptr, stream>>>((GM_ADDR)ids, (GM_ADDR)row, t.num_ids, t.num_experts, t.per_core, t.tile, t.hist_len);
}

}  // namespace flashlb
