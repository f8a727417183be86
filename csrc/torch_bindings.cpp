// The one TORCH_LIBRARY block: op schemas and their CUDA (and, for clear errors, CPU) kernels.
#include <Python.h>

#include <torch/library.h>

#include "ops/ops.h"

#ifndef MLA_TORCH_VERSION
#define MLA_TORCH_VERSION "unknown"
#endif
#ifndef MLA_CUDA_VERSION
#define MLA_CUDA_VERSION "unknown"
#endif

namespace mla::ops {
std::string build_info() {
  return std::string("torch=") + MLA_TORCH_VERSION + ";cuda=" + MLA_CUDA_VERSION;
}
}  // namespace mla::ops

TORCH_LIBRARY(mla_backend, m) {
  m.def(
      "get_decode_metadata(Tensor seqlens, Tensor(a!) part_meta, Tensor(b!) batch_meta, "
      "int rows=0) -> ()");
  m.def(
      "decode(Tensor q, Tensor kv_cache, Tensor block_table, Tensor seqlens, "
      "Tensor(a!) part_meta, Tensor(b!) batch_meta, float softmax_scale, bool causal, "
      "Tensor(c!) out, Tensor(d!) lse, Tensor(e!) o_accum, Tensor(f!) lse_accum, "
      "Tensor? q_pe=None, Tensor? q_start=None, int max_q_len=0, bool plan=False) -> ()");
  m.def("build_info() -> str", &mla::ops::build_info);
}

TORCH_LIBRARY_IMPL(mla_backend, CUDA, m) {
  m.impl("get_decode_metadata", &mla::ops::get_decode_metadata);
  m.impl("decode", &mla::ops::decode);
}

// CPU tensors reach the same checks, which reject them with a message naming the tensor
// (instead of the dispatcher's generic "no kernel for CPU").
TORCH_LIBRARY_IMPL(mla_backend, CPU, m) {
  m.impl("get_decode_metadata", &mla::ops::get_decode_metadata);
  m.impl("decode", &mla::ops::decode);
}

// Importing mla_backend._C runs the static registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
