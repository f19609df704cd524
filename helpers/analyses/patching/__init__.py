"""Activation patching, exact and by gradients: :mod:`.variants` (one row per patching variant), :mod:`.engine`
(the engine on the suite's own forward pass, with attribution patching) and :mod:`.through_hooks` (the same
sweeps through the model's hooks, where the forward pass is not trusted). The public names are importable
from here."""

from helpers.analyses.patching.engine import (
    AttributionAgreement,
    MetricAnchors,
    NormalisedMetric,
    PatchingEngine,
    PatchingResult,
    compare_attribution,
)
from helpers.analyses.patching.variants import PATCH_KINDS, PER_POSITION, VARIANTS, PatchKind, PatchVariant

__all__ = ["PATCH_KINDS", "PER_POSITION", "VARIANTS", "AttributionAgreement", "MetricAnchors", "NormalisedMetric",
           "PatchKind", "PatchVariant", "PatchingEngine", "PatchingResult", "compare_attribution"]
