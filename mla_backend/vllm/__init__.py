"""mla_backend as a vLLM attention backend for MLA models (DeepSeek-V2/V3 style).

registration.py: the plugin entry points and the MLA_BACKEND_VLLM switch (light imports).
selection.py, platform.py: how MLA layers get our backend when the switch is on.
backend.py: the backend, metadata builder and impl; plan.py: what the kernel gets per step.
compat.py: every vLLM name we use. Usage: docs/vllm.md.
"""
