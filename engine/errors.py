"""One base error type for everything Unmask raises on purpose.

Each message names the problem and the fix in one line; the CLI prints it on stderr and exits
non-zero, the TUI shows it, the language server answers with an empty result and keeps running.
"""

from __future__ import annotations


class UnmaskError(Exception):
    """Base of every expected failure; ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class ConfigError(UnmaskError):
    """A setting, flag or input value is invalid."""

    exit_code = 2


class ModelLoadError(UnmaskError):
    """A model folder or file is missing, incomplete, unsafe or corrupt."""

    exit_code = 3


class BackendError(UnmaskError):
    """A back end (torch device, llama.cpp) is unavailable or failed."""

    exit_code = 4


class SandboxError(UnmaskError):
    """Running generated code in the sandbox failed for a reason other than the code itself."""

    exit_code = 5
