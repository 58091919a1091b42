#pragma once
#include <cstdint>
#include <cstddef>
#define __aicore__
#define __global__
#define __gm__
#define __ubuf__
#define __cbuf__
#define __ca__
#define __cb__
#define __cc__
#define __fbuf__
#define __ssbuf__
#define __sync_noalias__
#define __sync_alias__
#define __in_pipe__(...)
#define __out_pipe__(...)
#define __inout_pipe__(...)
enum pipe_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_MTE4, PIPE_MTE5, PIPE_V2, PIPE_FIX, PIPE_NUM, PIPE_MTE };
enum event_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };
extern int64_t block_idx, block_num, sub_block_idx;
#include <cassert>
#include <vector>
#include <string>
#include <map>
#include "kernel_fp16.h"
#include "kernel_bf16.h"
struct fp8_e4m3fn_t { uint8_t v; };
struct fp8_e5m2_t { uint8_t v; };
struct fp8_e8m0_t { uint8_t v; };
struct fp4x2_e1m2_t { uint8_t v; };
struct fp4x2_e2m1_t { uint8_t v; };
struct hifloat8_t { uint8_t v; };
#define __simd_callee__
#define __host__
#define __BLOCK_LOCAL__
#define __check_sync_alias__
#define __WORKGROUP_LOCAL__
enum class QuantMode_t { NoQuant, F322F16, F322BF16, DEQF16, VDEQF16, QF322B8_PRE, VQF322B8_PRE, REQ8, VREQ8, DEQS16, VDEQS16,
  QF162B8_PRE, QF162S16_PRE, QF162S4_PRE, QF322BF16_PRE, QF322F16_PRE, QF322F32_PRE, QF322FP8_PRE, QF322HIF8_PRE,
  QF322HIF8_PRE_HYBRID, QS322BF16_PRE, REQ4, VQF162B8_PRE, VQF162S16_PRE, VQF162S4_PRE, VQF322BF16_PRE, VQF322F16_PRE,
  VQF322F32_PRE, VQF322FP8_PRE, VQF322HIF8_PRE, VQF322HIF8_PRE_HYBRID, VQS322BF16_PRE, VREQ4 };
enum class dcci_dst_t { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };
enum class cache_line_t { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class Order_t { VALUE_INDEX, INDEX_VALUE, ONLY_VALUE, ONLY_INDEX };
enum class pad_t { PAD_NONE, PAD_MODE1, PAD_MODE2, PAD_MODE3, PAD_MODE4, PAD_MODE5, PAD_MODE6, PAD_MODE7, PAD_MODE8 };
enum addr_cal_mode_t { inc, dec };
enum vtranspose_half_t { L128 = 0, H128 };
extern uint64_t g_fixpipeNdNzParam;
enum mem_t { L1 = 0, L0A, L0B, L0C, UB, BT };
enum mem_dsb_t { DSB_ALL = 0, DSB_DDR, DSB_UB, DSB_SEQ };
enum atomic_type_t { ATOMIC_NONE = 0, ATOMIC_F32, ATOMIC_F16, ATOMIC_S16, ATOMIC_S32, ATOMIC_S8, ATOMIC_BF16 };
enum atomic_op_t { ATOMIC_SUM = 0, ATOMIC_MAX, ATOMIC_MIN };
enum ub_addr8_t { VA0 = 0, VA1, VA2, VA3, VA4, VA5, VA6, VA7 };
using vector_align = uint64_t;
#define ASCENDC_HOST_AICORE
#include <iostream>
struct vector_bool { uint64_t v[4]; };
struct vector_address { uint32_t v; };
extern int64_t g_taskRation;
namespace AscendC { extern int32_t g_coreType; constexpr int32_t AIC_TYPE = 1; constexpr int32_t AIV_TYPE = 2; extern bool g_isVdeq; }
#define __disable_kernel_type_autoinfer__
