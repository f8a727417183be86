// The torch-facing op entry points registered in torch_bindings.cpp.
#pragma once

#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <cuda_runtime.h>

namespace mla::ops {

void get_decode_metadata(const at::Tensor& seqlens, const at::Tensor& part_meta,
                         const at::Tensor& batch_meta, int64_t rows);

// The metadata kernel on checked pointers, with the charge of `rows` query rows per sequence:
// get_decode_metadata, and decode(..., plan=True) for calls too large to plan in its kernels.
void launch_metadata(const int* seqlens, int* part_meta, int* batch_meta, int batch,
                     int num_parts, int64_t rows, cudaStream_t stream);

void decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
            const at::Tensor& seqlens, const at::Tensor& part_meta, const at::Tensor& batch_meta,
            double softmax_scale, bool causal, const at::Tensor& out, const at::Tensor& lse,
            const at::Tensor& o_accum, const at::Tensor& lse_accum,
            const std::optional<at::Tensor>& q_pe, const std::optional<at::Tensor>& q_start,
            int64_t max_q_len, bool plan);

std::string build_info();

}  // namespace mla::ops
