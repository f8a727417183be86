// torch op get_decode_metadata: validate -> guard -> fill MetadataParams -> launch.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "mla/api.h"
#include "ops/checks.h"
#include "ops/ops.h"

namespace mla::ops {

void check_sm90(const at::Tensor& t) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(t.device().index());
  TORCH_CHECK(prop->major == 9, "mla_backend kernels need an sm_90 (Hopper) GPU; ", t.device(),
              " is sm_", prop->major, prop->minor, " (", prop->name, ")");
}

void get_decode_metadata(const at::Tensor& seqlens, const at::Tensor& part_meta,
                         const at::Tensor& batch_meta, int64_t rows) {
  check_dtype(seqlens, "seqlens", at::kInt);
  check_dtype(part_meta, "part_meta", at::kInt);
  check_dtype(batch_meta, "batch_meta", at::kInt);

  TORCH_CHECK(seqlens.dim() == 1, "seqlens must be 1-D [batch], got shape ", seqlens.sizes());
  check_contiguous(seqlens, "seqlens");
  const int64_t batch = seqlens.size(0);
  TORCH_CHECK(part_meta.dim() == 2 && part_meta.size(0) >= 1 && part_meta.size(1) == 4,
              "part_meta must have shape [num_parts >= 1, 4], got ", part_meta.sizes());
  check_contiguous(part_meta, "part_meta");
  check_shape(batch_meta, "batch_meta", {batch, 4});
  check_contiguous(batch_meta, "batch_meta");
  TORCH_CHECK(batch < (int64_t(1) << 24) && part_meta.size(0) < (int64_t(1) << 20),
              "batch and num_parts too large");
  TORCH_CHECK(rows >= 0 && rows <= int64_t(kMaxQTokens) * kMaxHeads,
              "rows (query rows per sequence, s_q * h_q; 0 if not known) must be in [0, ",
              kMaxQTokens * kMaxHeads, "], got ", rows);

  check_same_cuda_device(seqlens, "seqlens", seqlens, "seqlens");
  check_same_cuda_device(part_meta, "part_meta", seqlens, "seqlens");
  check_same_cuda_device(batch_meta, "batch_meta", seqlens, "seqlens");
  check_sm90(seqlens);

  const c10::cuda::CUDAGuard guard(seqlens.device());
  launch_metadata(seqlens.data_ptr<int>(), part_meta.data_ptr<int>(), batch_meta.data_ptr<int>(),
                  static_cast<int>(batch), static_cast<int>(part_meta.size(0)), rows,
                  at::cuda::getCurrentCUDAStream());
}

void launch_metadata(const int* seqlens, int* part_meta, int* batch_meta, int batch,
                     int num_parts, int64_t rows, cudaStream_t stream) {
  MetadataParams params;
  params.seqlens = seqlens;
  params.part_meta = part_meta;
  params.batch_meta = batch_meta;
  params.batch = batch;
  params.num_parts = num_parts;
  const PlanCharge charge = plan_charge(batch, rows);
  params.fixed_cost = charge.head + charge.tail;
  params.fixed_head = charge.head;
  const cudaError_t err = run_metadata(params, stream);
  TORCH_CHECK(err == cudaSuccess, "mla_backend metadata kernel failed to launch: ",
              cudaGetErrorString(err));
}

}  // namespace mla::ops
