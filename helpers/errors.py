"""The suite's own errors. Each says what is wrong and how to fix it; the runner reports any of them in
one message and lets every other exception show its traceback (a bug, not bad input)."""

from __future__ import annotations


class SuiteError(Exception):
    """The root of every error the suite raises on purpose."""


class ModelLoadError(SuiteError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says which and how to proceed."""


class RunLockedError(SuiteError, RuntimeError):
    """Another run is writing the same output folder."""


class NotApplicable(SuiteError):
    """A template's analysis does not apply to this model or task (Gemma 2's post-attention norm couples the
    heads, so circuit discovery has no edges to walk).

    Raised in a template's cell, it stops the notebook there showing only this message (no traceback); the
    runner keeps that notebook, records the reason as the template's ``not_applicable`` in results.json's
    ``provenance.template_runs`` (the template has no section) and runs the other templates. The runner knows
    it by its class name, which is all papermill reports: raise this class itself, not a subclass.
    """

    def _render_traceback_(self) -> list[str]:  # what IPython shows instead of the traceback
        return [f"Not applicable: {self}"]
