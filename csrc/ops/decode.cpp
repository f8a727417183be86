// torch op decode: validate -> guard -> fill DecodeParams -> (plan) -> main kernel -> combine.
// Never allocates, never syncs with the host.
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

// The layout rules of q, q_pe and out: last dim contiguous, the other strides multiples of 8
// elements, base 16-byte aligned (16-byte copies per row chunk).
void check_row_layout(const at::Tensor& t, const char* name) {
  check_last_dim_contiguous(t, name);
  bool ok = aligned16(t);
  for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && t.stride(d) % 8 == 0;
  TORCH_CHECK(ok, name, " must be 16-byte aligned with strides multiple of 8 elements, got strides ",
              t.strides());
}

// The queries' sizes: uniform (q [B, s_q, h_q, D]) or varlen (q [T, h_q, D], sequence b's
// tokens q_start[b] .. q_start[b + 1] - 1, at most max_q_len of them; s_q = max_q_len).
struct QueryShape {
  int64_t batch, s_q, h_q, tokens;
  bool varlen;
};

QueryShape check_queries(const at::Tensor& q, const std::optional<at::Tensor>& q_pe,
                         const at::Tensor& seqlens, const std::optional<at::Tensor>& q_start,
                         int64_t max_q_len) {
  check_dtype(q, "q", at::kBFloat16);
  const int64_t q_dim = q_pe ? kDimV : kDimQK;
  const char* pe_note = q_pe ? " when q_pe is given" : "";
  QueryShape qs;
  qs.varlen = q_start.has_value();
  if (!qs.varlen) {
    // q [B, s_q, h_q, 576], or q [B, s_q, h_q, 512] with q_pe [B, s_q, h_q, 64]
    TORCH_CHECK(q.dim() == 4, "q must be 4-D [batch, s_q, h_q, ", q_dim, "], got shape ",
                q.sizes());
    TORCH_CHECK(q.size(3) == q_dim, "q's last dim (head dim) must be ", q_dim, pe_note, ", got ",
                q.size(3));
    qs.batch = q.size(0);
    qs.s_q = q.size(1);
    qs.h_q = q.size(2);
    qs.tokens = qs.batch * qs.s_q;
    TORCH_CHECK(qs.s_q >= 1 && qs.s_q <= kMaxQTokens, "q's s_q (dim 1) must be in [1, ",
                kMaxQTokens, "], got ", qs.s_q);
  } else {
    // q [T, h_q, 576] (or 512 with q_pe [T, h_q, 64]), q_start [B + 1]
    TORCH_CHECK(q.dim() == 3, "q must be 3-D [tokens, h_q, ", q_dim,
                "] when q_start is given, got shape ", q.sizes());
    TORCH_CHECK(q.size(2) == q_dim, "q's last dim (head dim) must be ", q_dim, pe_note, ", got ",
                q.size(2));
    qs.batch = seqlens.dim() == 1 ? seqlens.size(0) : 0;
    qs.s_q = max_q_len;
    qs.h_q = q.size(1);
    qs.tokens = q.size(0);
    TORCH_CHECK(qs.tokens < (int64_t(1) << 31), "q has too many tokens (dim 0): ", qs.tokens);
    TORCH_CHECK(max_q_len >= 1 && max_q_len <= kMaxQTokens, "max_q_len must be in [1, ",
                kMaxQTokens, "] when q_start is given, got ", max_q_len);
    check_dtype(*q_start, "q_start", at::kInt);
    check_shape(*q_start, "q_start", {qs.batch + 1});
    check_contiguous(*q_start, "q_start");
  }
  TORCH_CHECK(qs.h_q >= 1 && qs.h_q <= kMaxHeads, "q's h_q must be in [1, ", kMaxHeads, "], got ",
              qs.h_q);
  check_row_layout(q, "q");
  if (q_pe) {
    check_dtype(*q_pe, "q_pe", at::kBFloat16);
    if (qs.varlen) {
      check_shape(*q_pe, "q_pe", {qs.tokens, qs.h_q, kDimQK - kDimV});
    } else {
      check_shape(*q_pe, "q_pe", {qs.batch, qs.s_q, qs.h_q, kDimQK - kDimV});
    }
    check_row_layout(*q_pe, "q_pe");
  }
  return qs;
}

QueryShape check_inputs(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
                  const at::Tensor& seqlens, const at::Tensor& part_meta,
                  const at::Tensor& batch_meta, const at::Tensor& out, const at::Tensor& lse,
                  const at::Tensor& o_accum, const at::Tensor& lse_accum,
                  const std::optional<at::Tensor>& q_pe, const std::optional<at::Tensor>& q_start,
                  int64_t max_q_len) {
  check_dtype(kv_cache, "kv_cache", at::kBFloat16);
  check_dtype(block_table, "block_table", at::kInt);
  check_dtype(seqlens, "seqlens", at::kInt);
  check_dtype(part_meta, "part_meta", at::kInt);
  check_dtype(batch_meta, "batch_meta", at::kInt);
  check_dtype(out, "out", at::kBFloat16);
  check_dtype(lse, "lse", at::kFloat);
  check_dtype(o_accum, "o_accum", at::kBFloat16);
  check_dtype(lse_accum, "lse_accum", at::kFloat);

  const QueryShape qs = check_queries(q, q_pe, seqlens, q_start, max_q_len);
  const int64_t batch = qs.batch, s_q = qs.s_q, h_q = qs.h_q;

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

  if (qs.varlen) {
    check_shape(out, "out", {qs.tokens, h_q, kDimV});
    check_shape(lse, "lse", {qs.tokens, h_q});
  } else {
    check_shape(out, "out", {batch, s_q, h_q, kDimV});
    check_shape(lse, "lse", {batch, s_q, h_q});
  }
  check_row_layout(out, "out");

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
  if (q_start) check_same_cuda_device(*q_start, "q_start", q, "q");
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
  return qs;
}

}  // namespace

void decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
            const at::Tensor& seqlens, const at::Tensor& part_meta, const at::Tensor& batch_meta,
            double softmax_scale, bool causal, const at::Tensor& out, const at::Tensor& lse,
            const at::Tensor& o_accum, const at::Tensor& lse_accum,
            const std::optional<at::Tensor>& q_pe, const std::optional<at::Tensor>& q_start,
            int64_t max_q_len, bool plan) {
  TORCH_CHECK(std::isfinite(softmax_scale) && softmax_scale > 0,
              "softmax_scale must be finite and > 0, got ", softmax_scale);
  const QueryShape qs = check_inputs(q, kv_cache, block_table, seqlens, part_meta, batch_meta,
                                     out, lse, o_accum, lse_accum, q_pe, q_start, max_q_len);
  if (qs.batch == 0 || qs.tokens == 0) return;

  // Batch, token and head strides of q, q_pe, out and lse; a varlen tensor has no batch dim
  // (its token index carries the sequence: q_start).
  auto strides = [&](const at::Tensor& t, int64_t& batch_stride, int64_t& token_stride,
                     int64_t& head_stride) {
    const int d = qs.varlen ? 0 : 1;  // the token dim; heads follow it
    batch_stride = qs.varlen ? 0 : t.stride(0);
    token_stride = t.stride(d);
    head_stride = t.stride(d + 1);
  };
  const c10::cuda::CUDAGuard guard(q.device());
  DecodeParams p;
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.data_ptr());
  strides(q, p.q_batch_stride, p.q_token_stride, p.q_head_stride);
  const at::Tensor& pe = q_pe ? *q_pe : q;  // without q_pe: dims 512.. of q
  p.q_pe = reinterpret_cast<const __nv_bfloat16*>(pe.data_ptr()) + (q_pe ? 0 : kDimV);
  strides(pe, p.q_pe_batch_stride, p.q_pe_token_stride, p.q_pe_head_stride);
  p.q_start = q_start ? q_start->data_ptr<int>() : nullptr;
  p.num_tokens = static_cast<int>(qs.tokens);
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
  p.plan_in_kernel = false;
  p.plan_fixed_cost = p.plan_fixed_head = 0;
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  strides(out, p.out_batch_stride, p.out_token_stride, p.out_head_stride);
  p.lse = lse.data_ptr<float>();
  strides(lse, p.lse_batch_stride, p.lse_token_stride, p.lse_head_stride);
  p.o_accum = reinterpret_cast<__nv_bfloat16*>(o_accum.data_ptr());
  p.lse_accum = lse_accum.data_ptr<float>();
  p.batch = static_cast<int>(qs.batch);
  p.s_q = static_cast<int>(qs.s_q);
  p.h_q = static_cast<int>(qs.h_q);
  p.rows = p.s_q * p.h_q;
  p.num_parts = static_cast<int>(part_meta.size(0));
  p.num_m_tiles = (p.rows + kDecodeRowsPerCta - 1) / kDecodeRowsPerCta;
  p.scale_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  p.causal = causal;
  p.trace = nullptr;  // set by the launcher of a trace build only

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (plan) {
    // The plan of these seqlens for this decode's rows, written to part_meta and batch_meta: by
    // the decode kernel itself for a small call (no metadata kernel), else by the metadata kernel.
    if (plan_in_kernel_fits(p.batch, p.rows, p.num_parts)) {
      const PlanCharge charge = plan_charge(p.batch, p.rows);
      p.plan_in_kernel = true;
      p.plan_fixed_cost = charge.head + charge.tail;
      p.plan_fixed_head = charge.head;
    } else {
      launch_metadata(p.seqlens, p.part_meta, p.batch_meta, p.batch, p.num_parts, p.rows, stream);
    }
  }
  cudaError_t err = run_decode_main(p, stream);
  TORCH_CHECK(err == cudaSuccess, "mla_backend decode kernel failed to launch: ",
              cudaGetErrorString(err));
  err = run_combine(p, stream);
  TORCH_CHECK(err == cudaSuccess, "mla_backend combine kernel failed to launch: ",
              cudaGetErrorString(err));
}

}  // namespace mla::ops
