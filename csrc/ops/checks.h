// Input checks shared by the torch-facing ops. Each names the tensor and what was expected.
//
// Order: dtype, then layout and shape, then device and architecture. The house order puts the
// device first; we check it late so that every dtype/shape check is reachable (and tested) with
// CPU tensors on machines without a GPU. Nothing is written before all checks pass.
#pragma once

#include <ATen/ATen.h>

namespace mla::ops {

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must be ", expected, ", got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ", t.sizes());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (strides ", t.strides(), ")");
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1, name, " must be contiguous in its last dim, got stride ",
              t.stride(-1));
}

// Tensors must live on the CUDA device of `ref` (`ref_name`).
inline void check_same_cuda_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                                   const char* ref_name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), " like ", ref_name,
              ", got ", t.device());
}

// The kernels are built for sm_90a only.
void check_sm90(const at::Tensor& t);

}  // namespace mla::ops
