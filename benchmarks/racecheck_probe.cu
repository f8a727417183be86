// What compute-sanitizer's racecheck accepts as ordering between two warpgroups: warpgroup 0
// writes a shared buffer, warpgroup 1 reads it, four rounds over two buffers (a barrier both
// warpgroups sync on orders each read before the buffer's next write). Every variant is ordered
// by the PTX rules; racecheck should report nothing for any of them.
//
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O2 -lineinfo -o /tmp/racecheck_probe \
//       benchmarks/racecheck_probe.cu && compute-sanitizer --tool racecheck /tmp/racecheck_probe
//
// H200, compute-sanitizer of CUDA 13.0, 2026-12-01 (docs/perf.md, v7): kArriveSync, kSyncSync,
// kSyncThreads and kMbarrier are clean; kSubsetEveryRound and kSubsetFirstRound, where warpgroup
// 0 also syncs on a named barrier of its own 128 threads before writing, are reported as races
// (read after write, at the consumer's read), even when that barrier runs only in the first
// round. That is why the decode kernel's warpgroup-local sync is an mbarrier. probe_epilogue
// (v9's staged epilogue in small: a bar.arrive / bar.sync hand-off, then a tile written and read
// across __syncthreads) is reported too, with plain STS/LDS and with generic accesses through
// an integer-aligned base alike (2026-12-01, docs/perf.md v10): the tool misreads that
// sequence as well.
#include <cstdint>
#include <cstdio>

enum Mode {
  kArriveSync,        // producer bar.arrive, consumer bar.sync (one named barrier, 256 threads)
  kSyncSync,          // both bar.sync
  kSyncThreads,       // both __syncthreads
  kMbarrier,          // producer mbarrier.arrive (count 128), consumer try_wait on the phase
  kSubsetEveryRound,  // kArriveSync, and warpgroup 0 syncs alone (bar.sync, 128) before writing
  kSubsetFirstRound,  // the same, the warpgroup-0 barrier in the first round only
};

__device__ __forceinline__ void bar_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ uint32_t smem(void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

template <Mode kMode>
__global__ void probe(float* out) {
  __shared__ float buf[2][128];
  __shared__ uint64_t mbar[2];
  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int t = tid % 128;
  constexpr bool kSubset = kMode == kSubsetEveryRound || kMode == kSubsetFirstRound;
  if (tid == 0) {
    for (int i = 0; i < 2; ++i) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem(&mbar[i])), "r"(128));
    }
  }
  __syncthreads();
  float acc = 0.f;
  for (int it = 0; it < 4; ++it) {
    const int s = it & 1;
    if (wg == 0) {
      if (kSubset && (kMode == kSubsetEveryRound || it == 0)) bar_sync(3, 128);
      buf[s][t] = float(it * 1000 + t);
      if (kMode == kArriveSync || kSubset) bar_arrive(1, 256);
      if (kMode == kSyncSync) bar_sync(1, 256);
      if (kMode == kSyncThreads) __syncthreads();
      if (kMode == kMbarrier) {
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem(&mbar[s])) : "memory");
      }
    } else {
      if (kMode == kArriveSync || kMode == kSyncSync || kSubset) bar_sync(1, 256);
      if (kMode == kSyncThreads) __syncthreads();
      if (kMode == kMbarrier) {
        asm volatile(
            "{ .reg .pred p; W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1; @!p bra W; }"
            ::"r"(smem(&mbar[s])), "r"((it >> 1) & 1) : "memory");
      }
      acc += buf[s][(t + 5) % 128];
    }
    // Both sides meet once per round: the read of buf[s] comes before its next write.
    if (kMode == kSyncThreads) {
      __syncthreads();
    } else {
      bar_sync(2, 256);
    }
  }
  out[tid] = acc;
}

// The 64-row kernel's staged epilogue of v9 in small (racecheck reported its tile's
// writes and reads as races across the __syncthreads between them; this probe draws the same
// reports in both forms, docs/perf.md v10). Per round,
// warpgroup 0 arrives on a named barrier and writes its half of each row of a tile, warpgroup 1
// syncs on that barrier and writes the other half, a __syncthreads, then every thread reads a
// row the other warpgroup wrote, and a __syncthreads before the next round's writes. kAligned:
// the tile sits in dynamic shared memory behind the kernel's uintptr_t alignment, so its
// accesses compile to generic ST/LD; otherwise a plain __shared__ array (STS/LDS).
template <bool kAligned>
__global__ void probe_epilogue(float* out) {
  __shared__ float plain[16][257];
  extern __shared__ uint8_t dyn_raw[];
  float* tile = kAligned ? reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(dyn_raw) + 1023) &
                                                    ~uintptr_t(1023))
                         : &plain[0][0];
  constexpr int kPitch = 257;
  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int t = tid % 128;
  float acc = 0.f;
  for (int it = 0; it < 4; ++it) {
    if (wg == 0) {
      bar_arrive(5, 256);
    } else {
      bar_sync(5, 256);
    }
    for (int r = 0; r < 16; ++r) tile[r * kPitch + wg * 128 + t] = float(it * 1000 + r + t);
    __syncthreads();  // the tile is written
    for (int r = 0; r < 16; ++r) acc += tile[r * kPitch + (1 - wg) * 128 + t];
    __syncthreads();  // read before the next round's writes
  }
  out[tid] = acc;
}

template <Mode kMode>
void run(float* d, const char* name) {
  probe<kMode><<<1, 256>>>(d);
  std::printf("%-18s %s\n", name, cudaGetErrorString(cudaDeviceSynchronize()));
}

int main() {
  float* d = nullptr;
  cudaMalloc(&d, 256 * sizeof(float));
  run<kArriveSync>(d, "arrive/sync");
  run<kSyncSync>(d, "sync/sync");
  run<kSyncThreads>(d, "__syncthreads");
  run<kMbarrier>(d, "mbarrier");
  run<kSubsetEveryRound>(d, "subset every round");
  run<kSubsetFirstRound>(d, "subset first round");
  probe_epilogue<false><<<1, 256>>>(d);
  std::printf("%-18s %s\n", "epilogue, STS/LDS", cudaGetErrorString(cudaDeviceSynchronize()));
  probe_epilogue<true><<<1, 256, 16 * 257 * 4 + 1024>>>(d);
  std::printf("%-18s %s\n", "epilogue, generic", cudaGetErrorString(cudaDeviceSynchronize()));
  cudaFree(d);
  return 0;
}
