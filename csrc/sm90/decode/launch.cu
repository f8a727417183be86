// run_decode_main: the 64-row-tile kernel. The KV tensor map is a kernel parameter, so CUDA graphs
// capture it by value; the launch overlaps the metadata kernel (PDL).
#include <cuda_runtime.h>

#ifdef MLA_TRACE_BUILD
#include <cstdio>
#include <cstdlib>
#include <vector>
#endif

#include "mla/api.h"
#include "mla/launch.h"
#include "sm90/decode/kernel.cuh"
#include "sm90/launch_utils.h"

namespace mla {
namespace {

#ifdef MLA_TRACE_BUILD
// Trace builds only: with MLA_TRACE_FILE set, the call runs with event clocks and appends them to
// that file (a header of four uint32: 'MLAT', grid x, grid y, slots per CTA; then the uint64
// rows). It synchronises the stream, so it is for eager calls, not CUDA-graph capture.
cudaError_t launch_traced(const DecodeParams& params, const CUtensorMap& tmap,
                          const sm90::QTensorMaps& qmaps, dim3 grid,
                          cudaStream_t stream, const char* path) {
  using namespace sm90::decode;
  DecodeParams tp = params;
  const size_t n = size_t(grid.x) * grid.y * kTraceSlots;
  cudaError_t err = cudaMalloc(&tp.trace, n * sizeof(unsigned long long));
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(tp.trace, 0, n * sizeof(unsigned long long), stream);
  if (err == cudaSuccess) {
    const auto kernel = tp.plan_in_kernel ? decode_kernel<true> : decode_kernel<false>;
    err = launch_pdl(kernel, grid, dim3(kThreads), kSmemBytes, stream, tp, tmap, qmaps);
  }
  std::vector<unsigned long long> host(n);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err == cudaSuccess) {
    err = cudaMemcpy(host.data(), tp.trace, n * sizeof(unsigned long long),
                     cudaMemcpyDeviceToHost);
  }
  cudaFree(tp.trace);
  if (err != cudaSuccess) return err;
  if (FILE* f = std::fopen(path, "ab")) {
    const unsigned int header[4] = {0x54414c4du, grid.x, grid.y, unsigned(kTraceSlots)};
    std::fwrite(header, sizeof(header), 1, f);
    std::fwrite(host.data(), sizeof(unsigned long long), n, f);
    std::fclose(f);
  }
  return cudaSuccess;
}
#endif

}  // namespace

cudaError_t run_decode_main(const DecodeParams& params, cudaStream_t stream) {
  using namespace sm90::decode;
  CUtensorMap tmap;
  cudaError_t err = sm90::make_kv_tensor_map(params, &tmap);
  if (err != cudaSuccess) return err;
  DecodeParams kp = params;
  sm90::QTensorMaps qmaps{};
  kp.q_tma = sm90::make_q_tensor_maps(kp, &qmaps);
  static bool smem_set[2][64] = {};  // per instantiation, per device
  const auto kernel = kp.plan_in_kernel ? decode_kernel<true> : decode_kernel<false>;
  err = sm90::ensure_smem_limit(reinterpret_cast<const void*>(kernel), kSmemBytes,
                                smem_set[kp.plan_in_kernel]);
  if (err != cudaSuccess) return err;
  const dim3 grid(params.num_m_tiles, params.num_parts);
#ifdef MLA_TRACE_BUILD
  const char* trace_path = std::getenv("MLA_TRACE_FILE");
  if (trace_path != nullptr && trace_path[0] != '\0') {
    return launch_traced(kp, tmap, qmaps, grid, stream, trace_path);
  }
#endif
  return launch_pdl(kernel, grid, dim3(kThreads), kSmemBytes, stream, kp, tmap, qmaps);
}

}  // namespace mla
