"""Import llama-cpp-python once, with one clear error, and route llama.cpp's log to ours.

Shared by the llama.cpp back end and the GGUF exporter (which quantizes through llama.cpp).
"""

from __future__ import annotations

import ctypes
import logging

from engine.errors import BackendError

log = logging.getLogger(__name__)
_LOG_CALLBACK = None


def llama():
    try:
        import llama_cpp
    except ImportError as err:
        raise BackendError("--backend llamacpp needs llama-cpp-python; install it with "
                           "CMAKE_ARGS='-DLLAVA_BUILD=OFF' pip install 'unmask[llamacpp]' "
                           "(compiles llama.cpp, about 5 minutes)") from err
    return llama_cpp


def quiet_llama_log() -> None:
    """Route llama.cpp's own log to our logger instead of stderr."""
    global _LOG_CALLBACK
    L = llama()
    if _LOG_CALLBACK is None:
        def forward(level, text, user_data):
            log.debug(text.decode(errors="replace").rstrip())
        _LOG_CALLBACK = L.llama_log_callback(forward)
        L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
