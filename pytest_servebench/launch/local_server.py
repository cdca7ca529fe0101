"""Run llama-cpp-python's OpenAI-compatible server with llama.cpp's AMX kernels kept away.

llama.cpp's AMX matrix kernels segfault on the first request on Sapphire Rapids-class CPUs
(ggml-org/llama.cpp#20824, open without a fix). The README's install builds llama-cpp-python
without them (``CMAKE_ARGS="-DGGML_NATIVE=OFF"``: AVX2 on x86-64, the armv8-a baseline on ARM64),
so nothing depends on the CPU it was built on. But pip's wheel cache ignores ``CMAKE_ARGS``: a
wheel built natively on an AMX machine earlier is reused as it is. Such a build reports
``AMX_INT8 = 1``; for it, the model's weights are kept out of llama.cpp's "extra" buffer types
(the AMX buffer is one), which is exactly what ``use_extra_bufts = false`` does, and the server
log says so. Any other build runs untouched.

Usage: ``python -m pytest_servebench.launch.local_server <llama_cpp.server arguments>``.
"""

from __future__ import annotations

import runpy
import sys


def build_features() -> str:
    """The CPU features llama.cpp was compiled with ("CPU : SSE3 = 1 | AVX2 = 1 | ...")."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return info.decode(errors="replace") if isinstance(info, bytes) else str(info)


def has_amx_kernels(features: str) -> bool:
    return "AMX_INT8 = 1" in features


def keep_weights_out_of_extra_buffers() -> bool:
    """Make every model load with use_extra_bufts = false. Returns False (and changes nothing)
    when this llama-cpp-python has no such field."""
    import llama_cpp.llama_cpp as bindings

    fields = {name for name, *_ in getattr(bindings.llama_model_params, "_fields_", [])}
    if "use_extra_bufts" not in fields:
        return False
    default_params = bindings.llama_model_default_params

    def params_without_extra_buffers():  # type: ignore[no-untyped-def]
        params = default_params()
        params.use_extra_bufts = False
        return params

    # llama_cpp.llama calls bindings.llama_model_default_params() at load time.
    bindings.llama_model_default_params = params_without_extra_buffers
    return True


def main() -> None:
    features = build_features()
    if has_amx_kernels(features):
        if keep_weights_out_of_extra_buffers():
            note = "weights stay out of the AMX buffer (use_extra_bufts = false)"
        else:
            note = "this llama-cpp-python cannot turn them off: expect a crash"
        print(
            "servebench: this llama-cpp-python was built with llama.cpp's AMX kernels, which "
            f"crash on the first request (ggml-org/llama.cpp#20824); {note}. For a portable "
            "build: CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --force-reinstall --no-deps "
            "--no-cache-dir 'llama-cpp-python[server]==0.3.36'",
            file=sys.stderr,
            flush=True,
        )
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
