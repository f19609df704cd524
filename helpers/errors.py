"""The suite's own errors. Each says what is wrong and how to fix it; the runner reports any of them in
one message and lets every other exception show its traceback (a bug, not bad input)."""

from __future__ import annotations


class SuiteError(Exception):
    """The root of every error the suite raises on purpose."""


class ModelLoadError(SuiteError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says which and how to proceed."""


class RunLockedError(SuiteError, RuntimeError):
    """Another run is writing the same output folder."""
