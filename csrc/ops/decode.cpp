// torch op decode: validate -> guard -> fill DecodeParams -> main kernel -> combine. Never allocates, never syncs with the host.
#include <algorithm>
#include <cmath>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "mla/api.h"
#include "ops/checks.h"
#include "ops/ops.h"

namespace mla::ops {
namespace {

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// A query tensor's layout rules (q, or the two halves q and q_pe): last dim contiguous, the
// other strides multiples of 8 elements, base 16-byte aligned (16-byte copies per row chunk).
void check_query_layout(const at::Tensor& t, const char* name) {
  check_last_dim_contiguous(t, name);
  TORCH_CHECK(t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0 && aligned16(t),
              name, " must be 16-byte aligned with strides multiple of 8 elements, got strides ",
              t.strides());
}

void check_inputs(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
                  const at::Tensor& seqlens, const at::Tensor& part_meta,
                  const at::Tensor& batch_meta, const at::Tensor& out, const at::Tensor& lse,
                  const at::Tensor& o_accum, const at::Tensor& lse_accum,
                  const std::optional<at::Tensor>& q_pe) {
  check_dtype(q, "q", at::kBFloat16);
  check_dtype(kv_cache, "kv_cache", at::kBFloat16);
  check_dtype(block_table, "block_table", at::kInt);
  check_dtype(seqlens, "seqlens", at::kInt);
  check_dtype(part_meta, "part_meta", at::kInt);
  check_dtype(batch_meta, "batch_meta", at::kInt);
  check_dtype(out, "out", at::kBFloat16);
  check_dtype(lse, "lse", at::kFloat);
  check_dtype(o_accum, "o_accum", at::kBFloat16);
  check_dtype(lse_accum, "lse_accum", at::kFloat);

  // q [B, s_q, h_q, 576], or q [B, s_q, h_q, 512] with q_pe [B, s_q, h_q, 64]
  const int64_t q_dim = q_pe ? kDimV : kDimQK;
  TORCH_CHECK(q.dim() == 4, "q must be 4-D [batch, s_q, h_q, ", q_dim, "], got shape ", q.sizes());
  TORCH_CHECK(q.size(3) == q_dim, "q's last dim (head dim) must be ", q_dim,
              q_pe ? " when q_pe is given" : "", ", got ", q.size(3));
  const int64_t batch = q.size(0), s_q = q.size(1), h_q = q.size(2);
  TORCH_CHECK(s_q >= 1 && s_q <= kMaxQTokens, "q's s_q (dim 1) must be in [1, ", kMaxQTokens,
              "], got ", s_q);
  TORCH_CHECK(h_q >= 1 && h_q <= kMaxHeads, "q's h_q (dim 2) must be in [1, ", kMaxHeads, "], got ",
              h_q);
  check_query_layout(q, "q");
  if (q_pe) {
    check_dtype(*q_pe, "q_pe", at::kBFloat16);
    check_shape(*q_pe, "q_pe", {batch, s_q, h_q, kDimQK - kDimV});
    check_query_layout(*q_pe, "q_pe");
  }

  // kv_cache [num_pages, 64, 576] or [num_pages, 64, 1, 576]
  TORCH_CHECK(kv_cache.dim() == 3 || (kv_cache.dim() == 4 && kv_cache.size(2) == 1),
              "kv_cache must be [num_pages, ", kPageSize, ", ", kDimQK, "] or [num_pages, ",
              kPageSize, ", 1, ", kDimQK, "], got shape ", kv_cache.sizes());
  TORCH_CHECK(kv_cache.size(1) == kPageSize, "kv_cache's block size (dim 1) must be ", kPageSize,
              ", got ", kv_cache.size(1));
  TORCH_CHECK(kv_cache.size(-1) == kDimQK, "kv_cache's last dim must be ", kDimQK, ", got ",
              kv_cache.size(-1));
  check_last_dim_contiguous(kv_cache, "kv_cache");
  TORCH_CHECK(kv_cache.stride(0) % 8 == 0 && kv_cache.stride(1) % 8 == 0 && aligned16(kv_cache),
              "kv_cache must be 16-byte aligned with page/token strides multiple of 8 elements, "
              "got strides ",
              kv_cache.strides());
  TORCH_CHECK(kv_cache.size(0) < (int64_t(1) << 31), "kv_cache has too many pages");

  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == batch,
              "block_table must have shape [batch=", batch, ", max_pages], got ",
              block_table.sizes());
  check_last_dim_contiguous(block_table, "block_table");
  check_shape(seqlens, "seqlens", {batch});
  check_contiguous(seqlens, "seqlens");

  TORCH_CHECK(part_meta.dim() == 2 && part_meta.size(0) >= 1 && part_meta.size(1) == 4,
              "part_meta must have shape [num_parts >= 1, 4], got ", part_meta.sizes());
  check_contiguous(part_meta, "part_meta");
  check_shape(batch_meta, "batch_meta", {batch, 4});
  check_contiguous(batch_meta, "batch_meta");

  check_shape(out, "out", {batch, s_q, h_q, kDimV});
  check_last_dim_contiguous(out, "out");
  TORCH_CHECK(out.stride(0) % 8 == 0 && out.stride(1) % 8 == 0 && out.stride(2) % 8 == 0 &&
                  aligned16(out),
              "out must be 16-byte aligned with strides multiple of 8 elements, got strides ",
              out.strides());
  check_shape(lse, "lse", {batch, s_q, h_q});

  const int64_t rows = s_q * h_q;
  const int64_t slots = 2 * part_meta.size(0);
  TORCH_CHECK(o_accum.dim() == 3 && o_accum.size(0) >= slots && o_accum.size(1) == rows &&
                  o_accum.size(2) == kDimV,
              "o_accum must have shape [>= 2*num_parts=", slots, ", s_q*h_q=", rows, ", ", kDimV,
              "], got ", o_accum.sizes());
  check_contiguous(o_accum, "o_accum");
  TORCH_CHECK(aligned16(o_accum), "o_accum must be 16-byte aligned");
  TORCH_CHECK(lse_accum.dim() == 2 && lse_accum.size(0) >= slots && lse_accum.size(1) == rows,
              "lse_accum must have shape [>= 2*num_parts=", slots, ", s_q*h_q=", rows, "], got ",
              lse_accum.sizes());
  check_contiguous(lse_accum, "lse_accum");

  check_same_cuda_device(q, "q", q, "q");
  if (q_pe) check_same_cuda_device(*q_pe, "q_pe", q, "q");
  check_same_cuda_device(kv_cache, "kv_cache", q, "q");
  check_same_cuda_device(block_table, "block_table", q, "q");
  check_same_cuda_device(seqlens, "seqlens", q, "q");
  check_same_cuda_device(part_meta, "part_meta", q, "q");
  check_same_cuda_device(batch_meta, "batch_meta", q, "q");
  check_same_cuda_device(out, "out", q, "q");
  check_same_cuda_device(lse, "lse", q, "q");
  check_same_cuda_device(o_accum, "o_accum", q, "q");
  check_same_cuda_device(lse_accum, "lse_accum", q, "q");
  check_sm90(q);
}

}  // namespace

void decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
            const at::Tensor& seqlens, const at::Tensor& part_meta, const at::Tensor& batch_meta,
            double softmax_scale, bool causal, const at::Tensor& out, const at::Tensor& lse,
            const at::Tensor& o_accum, const at::Tensor& lse_accum,
            const std::optional<at::Tensor>& q_pe) {
  TORCH_CHECK(std::isfinite(softmax_scale) && softmax_scale > 0,
              "softmax_scale must be finite and > 0, got ", softmax_scale);
  check_inputs(q, kv_cache, block_table, seqlens, part_meta, batch_meta, out, lse, o_accum,
               lse_accum, q_pe);
  if (q.size(0) == 0) return;

  const c10::cuda::CUDAGuard guard(q.device());
  DecodeParams p;
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.data_ptr());
  p.q_batch_stride = q.stride(0);
  p.q_token_stride = q.stride(1);
  p.q_head_stride = q.stride(2);
  const at::Tensor& pe = q_pe ? *q_pe : q;  // without q_pe: dims 512.. of q
  p.q_pe = reinterpret_cast<const __nv_bfloat16*>(pe.data_ptr()) + (q_pe ? 0 : kDimV);
  p.q_pe_batch_stride = pe.stride(0);
  p.q_pe_token_stride = pe.stride(1);
  p.q_pe_head_stride = pe.stride(2);
  p.kv = reinterpret_cast<const __nv_bfloat16*>(kv_cache.data_ptr());
  p.kv_page_stride = kv_cache.stride(0);
  p.kv_token_stride = kv_cache.stride(1);
  p.num_pages = static_cast<int>(kv_cache.size(0));
  p.block_table = block_table.data_ptr<int>();
  p.block_table_stride = block_table.stride(0);
  p.max_pages = static_cast<int>(std::min<int64_t>(block_table.size(1), kMaxTablePages));
  p.seqlens = seqlens.data_ptr<int>();
  p.part_meta = part_meta.data_ptr<int>();
  p.batch_meta = batch_meta.data_ptr<int>();
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  p.out_batch_stride = out.stride(0);
  p.out_token_stride = out.stride(1);
  p.out_head_stride = out.stride(2);
  p.lse = lse.data_ptr<float>();
  p.lse_batch_stride = lse.stride(0);
  p.lse_token_stride = lse.stride(1);
  p.lse_head_stride = lse.stride(2);
  p.o_accum = reinterpret_cast<__nv_bfloat16*>(o_accum.data_ptr());
  p.lse_accum = lse_accum.data_ptr<float>();
  p.batch = static_cast<int>(q.size(0));
  p.s_q = static_cast<int>(q.size(1));
  p.h_q = static_cast<int>(q.size(2));
  p.rows = p.s_q * p.h_q;
  p.num_parts = static_cast<int>(part_meta.size(0));
  p.num_m_tiles = (p.rows + kDecodeRowsPerCta - 1) / kDecodeRowsPerCta;
  p.scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  p.causal = causal;
  p.trace = nullptr;  // set by the launcher of a trace build only

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err = run_decode_main(p, stream);
  TORCH_CHECK(err == cudaSuccess, "mla_backend decode kernel failed to launch: ",
              cudaGetErrorString(err));
  err = run_combine(p, stream);
  TORCH_CHECK(err == cudaSuccess, "mla_backend combine kernel failed to launch: ",
              cudaGetErrorString(err));
}

}  // namespace mla::ops
