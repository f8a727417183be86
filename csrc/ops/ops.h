// The torch-facing op entry points registered in torch_bindings.cpp.
#pragma once

#include <optional>
#include <string>

#include <ATen/ATen.h>

namespace mla::ops {

void get_decode_metadata(const at::Tensor& seqlens, const at::Tensor& part_meta,
                         const at::Tensor& batch_meta, int64_t rows);

void decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
            const at::Tensor& seqlens, const at::Tensor& part_meta, const at::Tensor& batch_meta,
            double softmax_scale, bool causal, const at::Tensor& out, const at::Tensor& lse,
            const at::Tensor& o_accum, const at::Tensor& lse_accum,
            const std::optional<at::Tensor>& q_pe, const std::optional<at::Tensor>& q_start,
            int64_t max_q_len, bool plan);

std::string build_info();

}  // namespace mla::ops
