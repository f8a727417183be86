"""vLLM's CUDA platform with mla_backend's backend choice for MLA layers (selection.py).

Named by `registration.platform_plugin` only while MLA_BACKEND_VLLM is set on a CUDA host.
Imports vLLM's CUDA platform module, which loads vLLM's CUDA extension: GPU hosts only.
"""

from mla_backend.vllm.compat import CudaPlatform
from mla_backend.vllm.selection import MlaBackendSelection


class MlaBackendCudaPlatform(MlaBackendSelection, CudaPlatform):
    """Everything as vLLM's CUDA platform, except the attention backend of MLA layers."""
