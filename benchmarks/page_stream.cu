// How fast one CTA per SM streams KV pages into shared memory, with no MMA: the decode kernel's
// page load (sm90/page_tile.cuh load_page on the shipped tensor map) against other ways to read
// the same 72 KB pages, while a consumer holds each page for a fixed time (docs/perf.md v27).
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -Icsrc/include -Icsrc benchmarks/page_stream.cu \
//        csrc/sm90/launch_utils.cu -o /tmp/page_stream && /tmp/page_stream
//
// Rows: how the page is loaded, grid size, hold time, stages; GB/s over 128 sequences of 32k
// tokens (4.83 GB, a shuffled block table). One consumer thread per CTA waits for a page, spins
// for the hold time, then refills the stage: the decode kernel's two-stage hand-off without its
// MMAs. The 5-D load writes the page in 8-token groups ([group][atom column][8 tokens][64 dims]),
// a layout the kernel does not use (it was measured on exp/v29-layout); a check reads it back.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "mla/ptx.cuh"
#include "mla/wgmma.cuh"
#include "sm90/launch_utils.h"
#include "sm90/page_tile.cuh"

using namespace mla;
using namespace mla::sm90;

#define CHECK_CUDA(x)                                                                   \
  do {                                                                                  \
    const cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

enum Load : int { kNineBoxes = 0, kFiveD = 1, kBulk = 2 };

__device__ __forceinline__ void tma_5d(void* dst, const CUtensorMap* map, int page, uint64_t* bar,
                                       uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %2, %2, %2, %3}], [%4], %5;" ::"r"(ptx::smem_addr(dst)),
      "l"(map), "r"(0), "r"(page), "r"(ptx::smem_addr(bar)), "l"(policy)
      : "memory");
}

// A contiguous bulk copy (no tensor map): the page's bytes as they lie in the cache.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, int bytes, uint64_t* bar,
                                          uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1], %2, [%3], %4;" ::"r"(ptx::smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(ptx::smem_addr(bar)), "l"(policy)
      : "memory");
}

__global__ void __launch_bounds__(128, 1)
    stream_pages(const __grid_constant__ CUtensorMap map, const uint8_t* kv, const int* pages,
                 int per_cta, int load, int stages, long long hold_cycles,
                 unsigned long long* sink) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t(kSwizzleAlign - 1));
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + stages * kPageBytes);
  if (threadIdx.x != 0) return;
  for (int s = 0; s < stages; ++s) ptx::mbarrier_init(&bars[s], 1);
  ptx::fence_mbarrier_init();
  const int* mine = pages + int64_t(blockIdx.x) * per_cta;
  const uint64_t policy = ptx::l2_policy_evict_first();
  int bad = 0;
  auto issue = [&](int j) {
    uint8_t* stage = smem + (j % stages) * kPageBytes;
    uint64_t* bar = &bars[j % stages];
    if (load == kNineBoxes) {
      load_page(&map, mine[j], stage, bar, &bad);
      return;
    }
    ptx::mbarrier_arrive_expect_tx(bar, kPageBytes);
    if (load == kFiveD) {
      tma_5d(stage, &map, mine[j], bar, policy);
    } else {
      bulk_copy(stage, kv + int64_t(mine[j]) * kPageBytes, kPageBytes, bar, policy);
    }
  };
  unsigned long long acc = 0;
  for (int j = 0; j < stages && j < per_cta; ++j) issue(j);
  for (int j = 0; j < per_cta; ++j) {
    ptx::mbarrier_wait_parity(&bars[j % stages], (j / stages) & 1);
    acc += smem[(j % stages) * kPageBytes + (j & 63) * 128];
    const long long t0 = clock64();
    while (clock64() - t0 < hold_cycles) {
    }
    if (j + stages < per_cta) issue(j + stages);
  }
  atomicAdd(sink, acc + bad);
}

// Every element of page `page` loaded by the 5-D map, at its swizzled place in the group layout.
__global__ void check_five_d(const __grid_constant__ CUtensorMap map, const uint16_t* kv, int page,
                             int* mismatches) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t(kSwizzleAlign - 1));
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + kPageBytes);
  if (threadIdx.x == 0) {
    ptx::mbarrier_init(bar, 1);
    ptx::fence_mbarrier_init();
    ptx::mbarrier_arrive_expect_tx(bar, kPageBytes);
    tma_5d(smem, &map, page, bar, ptx::l2_policy_evict_first());
  }
  __syncthreads();
  ptx::mbarrier_wait_parity(bar, 0);
  for (int i = threadIdx.x; i < kPageSize * kDimQK; i += blockDim.x) {
    const int t = i / kDimQK, d = i % kDimQK, r = t % 8, e = d % kBlockDims;
    const int line = ((t / 8) * kDimBlocks + d / kBlockDims) * 8 + r;
    const int off = line * 128 + (((e / 8) ^ r) << 4) + (e % 8) * 2;
    if (*reinterpret_cast<const uint16_t*>(smem + off) != kv[(int64_t(page) * kPageSize + t) * kDimQK + d]) {
      atomicAdd(mismatches, 1);
    }
  }
}

__global__ void ldg_read(const uint4* p, size_t n, unsigned long long* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) atomicAdd(sink, 1ull);  // keeps the loads
}

namespace {

// A 128B-swizzled bf16 map of kRank dims over the cache (the L2 policy is set per copy).
template <int kRank>
CUtensorMap tiled_map(void* kv, const cuuint64_t (&dims)[kRank],
                      const cuuint64_t (&strides)[kRank - 1], const cuuint32_t (&box)[kRank],
                      CUtensorMapL2promotion promo) {
  CUtensorMap map;
  cuuint32_t ones[kRank];
  for (auto& o : ones) o = 1;
  const auto encode = encode_fn();  // the extension's own lookup (sm90/launch_utils.cu)
  if (encode == nullptr) {
    std::printf("the driver has no cuTensorMapEncodeTiled\n");
    std::exit(1);
  }
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, kRank, kv, dims, strides, box, ones,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promo,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    std::printf("encoding the %d-D map failed\n", kRank);
    std::exit(1);
  }
  return map;
}

// The kernel's map with another L2 promotion (what it used before v27: 256 bytes).
CUtensorMap nine_box_map(void* kv, int num_pages, CUtensorMapL2promotion promo) {
  return tiled_map<3>(kv, {kDimQK, kPageSize, cuuint64_t(num_pages)},
                      {kDimQK * 2, kPageSize * kDimQK * 2}, {kBlockDims, kPageSize, 1}, promo);
}

// (64 dims, 8 tokens, 9 atom columns, 8 token groups, pages): one box is a whole page.
CUtensorMap five_d_map(void* kv, int num_pages, CUtensorMapL2promotion promo) {
  return tiled_map<5>(kv, {kBlockDims, 8, kDimBlocks, kPageSize / 8, cuuint64_t(num_pages)},
                      {kDimQK * 2, 128, 8 * kDimQK * 2, kPageSize * kDimQK * 2},
                      {kBlockDims, 8, kDimBlocks, kPageSize / 8, 1}, promo);
}

}  // namespace

int main() {
  const int num_pages = 128 * 32768 / kPageSize;
  const size_t bytes = size_t(num_pages) * kPageBytes;
  void* kv = nullptr;
  int* pages = nullptr;
  unsigned long long* sink = nullptr;
  int* mismatches = nullptr;
  CHECK_CUDA(cudaMalloc(&kv, bytes));
  CHECK_CUDA(cudaMalloc(&pages, num_pages * sizeof(int)));
  CHECK_CUDA(cudaMalloc(&sink, sizeof(*sink)));
  CHECK_CUDA(cudaMalloc(&mismatches, sizeof(int)));
  CHECK_CUDA(cudaMemset(kv, 0x3c, bytes));
  {
    std::vector<uint16_t> pattern(size_t(8) * kPageSize * kDimQK);
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = uint16_t((i * 2654435761u) >> 7);
    CHECK_CUDA(cudaMemcpy(kv, pattern.data(), pattern.size() * 2, cudaMemcpyHostToDevice));
  }

  // The shipped map, through the kernel's own host code.
  DecodeParams params{};
  params.kv = static_cast<const __nv_bfloat16*>(kv);
  params.num_pages = num_pages;
  params.kv_token_stride = kDimQK;
  params.kv_page_stride = int64_t(kPageSize) * kDimQK;
  CUtensorMap shipped;
  CHECK_CUDA(make_kv_tensor_map(params, &shipped));
  const CUtensorMap promo256 = nine_box_map(kv, num_pages, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  const CUtensorMap five_d = five_d_map(kv, num_pages, CU_TENSOR_MAP_L2_PROMOTION_NONE);
  const CUtensorMap five_d_256 = five_d_map(kv, num_pages, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);

  const int smem_max = 3 * kPageBytes + kSwizzleAlign + 64;
  CHECK_CUDA(cudaFuncSetAttribute(stream_pages, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max));
  CHECK_CUDA(cudaFuncSetAttribute(check_five_d, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kPageBytes + kSwizzleAlign + 64));
  for (int page : {0, 3, 7}) {
    CHECK_CUDA(cudaMemset(mismatches, 0, sizeof(int)));
    check_five_d<<<1, 256, kPageBytes + kSwizzleAlign + 64>>>(five_d, static_cast<const uint16_t*>(kv), page,
                                                              mismatches);
    int host = -1;
    CHECK_CUDA(cudaMemcpy(&host, mismatches, sizeof(int), cudaMemcpyDeviceToHost));
    std::printf("5-D group layout, page %d: %d mismatches of %d\n", page, host, kPageSize * kDimQK);
  }

  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  auto median_ms = [&](auto launch) {
    std::vector<float> t;
    for (int rep = 0; rep < 7; ++rep) {
      CHECK_CUDA(cudaEventRecord(e0));
      launch();
      CHECK_CUDA(cudaEventRecord(e1));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float ms = 0.f;
      CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(ms);
    }
    CHECK_CUDA(cudaGetLastError());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  for (int blocks : {132 * 4, 132 * 16}) {
    const float ms = median_ms([&] {
      ldg_read<<<blocks, 512>>>(static_cast<const uint4*>(kv), bytes / 16, sink);
    });
    std::printf("%-28s grid %5d                 %8.1f us %7.1f GB/s\n", "16-byte loads (ld.cs)", blocks,
                ms * 1e3, bytes / (ms * 1e6));
  }

  std::vector<int> order(num_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(0));
  CHECK_CUDA(cudaMemcpy(pages, order.data(), num_pages * sizeof(int), cudaMemcpyHostToDevice));
  int clock_khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  struct Variant {
    const char* name;
    const CUtensorMap* map;
    int load, stages;
  };
  const Variant variants[] = {
      {"9 boxes, no promotion (ours)", &shipped, kNineBoxes, 2},
      {"9 boxes, 256 B promotion", &promo256, kNineBoxes, 2},
      {"9 boxes, no promotion, 3 st", &shipped, kNineBoxes, 3},
      {"9 boxes, 256 B, 1 stage", &promo256, kNineBoxes, 1},
      {"5-D groups, no promotion", &five_d, kFiveD, 2},
      {"5-D groups, 256 B promotion", &five_d_256, kFiveD, 2},
      {"contiguous bulk copy", &shipped, kBulk, 2},
  };
  for (int grid : {132, 128}) {
    const int per_cta = num_pages / grid;
    const double moved = double(per_cta) * grid * kPageBytes;
    for (double hold_us : {0.0, 1.4}) {
      const long long hold = static_cast<long long>(hold_us * clock_khz / 1e3);  // at the max clock
      for (const Variant& v : variants) {
        const int smem = v.stages * kPageBytes + kSwizzleAlign + 64;
        const float ms = median_ms([&] {
          stream_pages<<<grid, 128, smem>>>(*v.map, static_cast<const uint8_t*>(kv), pages, per_cta,
                                            v.load, v.stages, hold, sink);
        });
        std::printf("%-28s grid %5d hold %.1f us %8.1f us %7.1f GB/s %5.2f us/page\n", v.name, grid,
                    hold_us, ms * 1e3, moved / (ms * 1e6), ms * 1e3 / per_cta);
      }
    }
  }
  return 0;
}
