"""Activation patching, exact and by gradients: :mod:`.engine` (the engine on the suite's own forward
pass, with attribution patching) and :mod:`.through_hooks` (the same sweeps through the model's hooks, where
the forward pass is not trusted). The engine's public names are importable from here."""

from helpers.analyses.patching.engine import (
    PATCH_KINDS,
    PER_POSITION,
    AttributionAgreement,
    MetricAnchors,
    NormalisedMetric,
    PatchingEngine,
    PatchingResult,
    PatchKind,
    compare_attribution,
    transformer_lens_patch_function,
)

__all__ = ["PATCH_KINDS", "PER_POSITION", "AttributionAgreement", "MetricAnchors", "NormalisedMetric",
           "PatchingEngine", "PatchingResult", "PatchKind", "compare_attribution", "transformer_lens_patch_function"]
