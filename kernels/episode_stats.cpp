// Ascend C kernel of torch.ops.flashlb.episode_stats for float32 steps (AI Core, vector cores).
//
// steps [S, C] (C = L * N columns) -> episodes [T, C] sums, mean [C], var [C]. Each core owns
// a range of whole 32-byte blocks of columns (host/include/flashlb/tiling.h) and walks it in
// tiles that fit the unified buffer: one pass sums each episode's steps, a second computes the
// mean and (population) variance of the episode sums, the oldest, short episode scaled to E
// steps. The CPU kernel in host/ops/hotness.cpp is the reference this kernel must equal; the
// CPU twin (kernels/twin/) runs this file unchanged against it.
//
// Accuracy (float32, against the CPU kernel run on the steps in float64): episode sums are
// exact while the partial sums are integers below 2^24 (counts), else within E * 2^-23
// relative; mean and variance divide by T (no rounded 1/T) and the variance is two-pass, so
// with M the largest |scaled episode sum| of a column the errors stay below
// (E + T + 2) * 2^-24 * M for the mean and 4 (E + T + 2) * 2^-24 * M^2 for the variance
// (tests/test_kernels_cpu_twin.py holds the twin to these bounds).
//
// Synchronisation (NPU architecture 2201): the compiler orders V -> V only, so every hand-over
// between the vector unit and the copy engines is an explicit flag pair: MTE2 -> V after each
// load, V -> MTE2 before a load overwrites `row` that vector ops may still read, V -> MTE3
// before a store, and MTE3 -> V before a stored buffer is overwritten. The episode sums that
// the second pass reads back from global memory need no MTE3 -> MTE2 flag of their own: the
// store's MTE3 -> V and the load's V -> MTE2 already order them (the twin checks that too).
#include "kernel_operator.h"

#include "flashlb/tiling.h"

namespace {

class EpisodeKernel {
 public:
  __aicore__ inline void Init(GM_ADDR steps, GM_ADDR episodes, GM_ADDR mean, GM_ADDR var,
                              int64_t numSteps, int64_t columns, int64_t episodeLen,
                              int64_t numEpisodes, int64_t firstLen, int64_t perCore, int64_t tile) {
    columns_ = columns;
    episodeLen_ = episodeLen;
    numEpisodes_ = numEpisodes;
    firstLen_ = firstLen;
    tile_ = tile;
    begin_ = AscendC::GetBlockIdx() * perCore;
    end_ = begin_ + perCore < columns ? begin_ + perCore : columns;
    stepsGm_.SetGlobalBuffer((__gm__ float *)steps, numSteps * columns);
    episodesGm_.SetGlobalBuffer((__gm__ float *)episodes, numEpisodes * columns);
    meanGm_.SetGlobalBuffer((__gm__ float *)mean, columns);
    varGm_.SetGlobalBuffer((__gm__ float *)var, columns);
    pipe_.InitBuffer(rowBuf_, tile * sizeof(float));
    pipe_.InitBuffer(accBuf_, tile * sizeof(float));
    pipe_.InitBuffer(sqBuf_, tile * sizeof(float));
  }

  __aicore__ inline void Process() {
    for (int64_t c = begin_; c < end_; c += tile_) {
      const int64_t n = end_ - c < tile_ ? end_ - c : tile_;
      SumEpisodes(c, n);
      Moments(c, n);
    }
  }

 private:
  template <AscendC::HardEvent E>
  __aicore__ inline void Await() {
    const int32_t id = static_cast<int32_t>(pipe_.FetchEventID(E));
    AscendC::SetFlag<E>(id);
    AscendC::WaitFlag<E>(id);
  }

  __aicore__ inline void Load(AscendC::LocalTensor<float>& dst, AscendC::GlobalTensor<float>& src,
                              int64_t offset, int64_t n) {
    Await<AscendC::HardEvent::V_MTE2>();
    AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(float)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<float> pad{false, 0, 0, 0.0f};
    AscendC::DataCopyPad(dst, src[offset], copy, pad);
    Await<AscendC::HardEvent::MTE2_V>();
  }

  __aicore__ inline void Store(AscendC::GlobalTensor<float>& dst, int64_t offset,
                               AscendC::LocalTensor<float>& src, int64_t n) {
    Await<AscendC::HardEvent::V_MTE3>();
    AscendC::DataCopyExtParams copy{1, static_cast<uint32_t>(n * sizeof(float)), 0, 0, 0};
    AscendC::DataCopyPad(dst[offset], src, copy);
    Await<AscendC::HardEvent::MTE3_V>();
  }

  __aicore__ inline void SumEpisodes(int64_t c, int64_t n) {
    AscendC::LocalTensor<float> row = rowBuf_.Get<float>();
    AscendC::LocalTensor<float> acc = accBuf_.Get<float>();
    const int32_t len = static_cast<int32_t>(n);
    for (int64_t i = 0; i < numEpisodes_; ++i) {
      const int64_t b = i == 0 ? 0 : firstLen_ + (i - 1) * episodeLen_;
      const int64_t e = i == 0 ? firstLen_ : b + episodeLen_;
      AscendC::Duplicate(acc, 0.0f, len);
      for (int64_t s = b; s < e; ++s) {
        Load(row, stepsGm_, s * columns_ + c, n);
        AscendC::Add(acc, acc, row, len);
      }
      Store(episodesGm_, i * columns_ + c, acc, n);
    }
  }

  // acc = sum over episodes of the scaled sums, then / T; sq likewise with squared deviations.
  __aicore__ inline void Moments(int64_t c, int64_t n) {
    AscendC::LocalTensor<float> row = rowBuf_.Get<float>();
    AscendC::LocalTensor<float> acc = accBuf_.Get<float>();
    AscendC::LocalTensor<float> sq = sqBuf_.Get<float>();
    const int32_t len = static_cast<int32_t>(n);
    const float episodes = static_cast<float>(numEpisodes_);
    const float firstScale = static_cast<float>(episodeLen_) / static_cast<float>(firstLen_);
    AscendC::Duplicate(acc, 0.0f, len);
    for (int64_t i = 0; i < numEpisodes_; ++i) {
      Load(row, episodesGm_, i * columns_ + c, n);
      if (i == 0) AscendC::Muls(row, row, firstScale, len);
      AscendC::Add(acc, acc, row, len);
    }
    AscendC::Duplicate(sq, episodes, len);
    AscendC::Div(acc, acc, sq, len);  // mean
    Store(meanGm_, c, acc, n);
    AscendC::Duplicate(sq, 0.0f, len);
    for (int64_t i = 0; i < numEpisodes_; ++i) {
      Load(row, episodesGm_, i * columns_ + c, n);
      if (i == 0) AscendC::Muls(row, row, firstScale, len);
      AscendC::Sub(row, row, acc, len);
      AscendC::Mul(row, row, row, len);
      AscendC::Add(sq, sq, row, len);
    }
    AscendC::Duplicate(row, episodes, len);
    AscendC::Div(sq, sq, row, len);  // population variance
    Store(varGm_, c, sq, n);
  }

  AscendC::TPipe pipe_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> rowBuf_, accBuf_, sqBuf_;
  AscendC::GlobalTensor<float> stepsGm_, episodesGm_, meanGm_, varGm_;
  int64_t columns_ = 0, episodeLen_ = 0, numEpisodes_ = 0, firstLen_ = 0, tile_ = 0;
  int64_t begin_ = 0, end_ = 0;
};

}  // namespace

// The launch is in kernels/launch.cpp.
extern "C" __global__ __aicore__ void flashlb_episode_stats_f32(
    GM_ADDR steps, GM_ADDR episodes, GM_ADDR mean, GM_ADDR var, int64_t numSteps, int64_t columns,
    int64_t episodeLen, int64_t numEpisodes, int64_t firstLen, int64_t perCore, int64_t tile) {
  EpisodeKernel op;
  op.Init(steps, episodes, mean, var, numSteps, columns, episodeLen, numEpisodes, firstLen, perCore, tile);
  op.Process();
}
