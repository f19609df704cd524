"""What each template saves: one report per template, which knows its section of results.json and the
summary lines the runner prints, so a template's save cell is one call, :func:`save`.

A report holds the template's results as they were computed (nothing is recomputed here but the tables
of top heads, read from the same results); :meth:`section` lists exactly the keys of the template's
section in ``helpers/results.schema.json`` (``tests/test_results.py`` reads them from this file), and
:meth:`summary` the lines. The numbers and lines are the ones the templates built by hand before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from helpers.analyses import compare
from helpers.analyses import sweep as sweep_analysis
from helpers.analyses.circuits.discovery import CircuitFileResult, CircuitProposal, PathWalk
from helpers.analyses.circuits.faithfulness import FaithfulnessByEdges, NormalisedFaithfulness
from helpers.analyses.circuits.graph import EdgeScores
from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.analyses.circuits.head_circuits import (
    CandidateChoice,
    CircuitFaithfulness,
    FaithfulnessCurve,
    MeanAblation,
    Minimality,
    RandomBaseline,
)
from helpers.analyses.circuits.head_roles import HeadRole
from helpers.analyses.copy_scores import AttentionProjection, CopyPredictions, CopyScores, SuccessorScores
from helpers.analyses.dla import (
    AdditivityCheck,
    ComponentAttribution,
    HeadAttribution,
    LogitDiffResult,
    LogitLensResult,
    TopPredictions,
)
from helpers.analyses.head_ablation import AblationResult
from helpers.analyses.head_functions import HeadRoleScores
from helpers.analyses.heads import HeadScore
from helpers.analyses.important_heads import HeadImportance, ImportantHead
from helpers.analyses.neurons import NeuronActivations, NeuronPatching, NeuronWrites
from helpers.analyses.patching import AttributionAgreement, MetricAnchors, PatchingResult
from helpers.analyses.stats import Interval
from helpers.analyses.vectors import UpdateVector, VectorArithmetic
from helpers.results import save_template_results


@runtime_checkable
class Report(Protocol):
    """What :func:`save` takes: the template whose section it fills, the section and the summary lines."""

    template: ClassVar[str]

    def section(self) -> dict[str, Any]: ...

    def summary(self) -> list[str]: ...


def save(results_path: str | None, report: Report) -> None:
    """Check ``report``'s section against the schema and write it where the run wants it (by hand,
    ``results_path`` None: checked only). See :func:`helpers.results.save_template_results`."""
    save_template_results(results_path, report.template, report.section(), report.summary())


def _heads(heads: Sequence[HeadScore], signed: str = "+.3f") -> str:
    return ", ".join(f"{h.name} {h.value:{signed}}" for h in heads)


@dataclass(frozen=True)
class DlaReport:
    template: ClassVar[str] = "dla"
    logit_diff: LogitDiffResult
    top_prediction: TopPredictions
    components: ComponentAttribution
    logit_lens: LogitLensResult
    heads: HeadAttribution
    additivity: AdditivityCheck
    top_k: int  # heads in the tables of top heads

    def section(self) -> dict[str, Any]:
        return {
            "logit_diff": self.logit_diff,
            "top_prediction": self.top_prediction,
            "components": self.components,
            "logit_lens": self.logit_lens,
            "heads": self.heads.to_dict(k=self.top_k),
            "additivity": self.additivity,
        }

    def summary(self) -> list[str]:
        positive, _ = self.heads.top(self.top_k)
        return [self.logit_diff.description, "top heads by DLA: " + _heads(positive[:5])]


@dataclass(frozen=True)
class PatchingReport:
    template: ClassVar[str] = "patching"
    anchors: MetricAnchors
    position_prompts: int  # the prompts of the per-position sweeps (one template's)
    resid_pre: PatchingResult
    attn_out: PatchingResult
    mlp_out: PatchingResult
    head_out: PatchingResult
    head_out_intervals: Mapping[str, Interval]
    head_v: PatchingResult
    head_pattern: PatchingResult
    attribution_agreement: Sequence[AttributionAgreement]
    top_k: int

    def section(self) -> dict[str, Any]:
        return {
            "metric": self.anchors,
            "position_prompts": self.position_prompts,
            "resid_pre": self.resid_pre,
            "attn_out": self.attn_out,
            "mlp_out": self.mlp_out,
            "head_out": self.head_out.to_dict(k=self.top_k, intervals=self.head_out_intervals),
            "head_v": self.head_v.to_dict(k=self.top_k),
            "head_pattern": self.head_pattern.to_dict(k=self.top_k),
            "attribution_agreement": list(self.attribution_agreement),
        }

    def summary(self) -> list[str]:
        anchors = self.anchors
        positive, _ = self.head_out.top(self.top_k)
        return [f"{anchors.task_metric}: clean {anchors.clean_value:.3f}, corrupted {anchors.corrupted_value:.3f}",
                "top heads by output patching: " + _heads(positive[:5])]


@dataclass(frozen=True)
class HeadFunctionsReport:
    template: ClassVar[str] = "head_functions"
    role_scores: HeadRoleScores
    importance: HeadImportance
    important_heads: Sequence[ImportantHead]
    ablation: AblationResult
    top_k: int

    def section(self) -> dict[str, Any]:
        return {
            "role_scores": self.role_scores.to_dict(k=self.top_k),
            "importance_source": self.importance.source,
            "important_heads": [h.to_dict() for h in self.important_heads],
            "ablation": self.ablation,
        }

    def summary(self) -> list[str]:
        result = self.ablation
        return [self.role_scores.summary(),
                f"ablating {result.head.name}: logit difference {float(result.logit_diff_before.mean()):.3f} -> "
                f"{float(result.logit_diff_after.mean()):.3f} (DLA predicted {float(result.predicted_after.mean()):.3f})"]


@dataclass(frozen=True)
class CopyScoresReport:
    template: ClassVar[str] = "copy_scores"
    scores: CopyScores
    copiers: Sequence[HeadScore]  # the example heads of each sign
    suppressors: Sequence[HeadScore]
    copy_predictions: Sequence[CopyPredictions]
    negative_predictions: Sequence[CopyPredictions]
    importance: HeadImportance
    attention_vs_projection: Sequence[AttentionProjection]
    top_k: int  # a word counts as copied when its token is among a head's top_k logits
    top_heads: int  # heads in the ranked tables
    successors: SuccessorScores | None = None  # None: the task has no ordered list

    def section(self) -> dict[str, Any]:
        return {
            "successor_scores": None if self.successors is None else self.successors.to_dict(k=self.top_heads),
            "copy_scores": self.scores.to_dict(k=self.top_heads),
            "copy_by_role": self.scores.by_role_of(self.copiers),
            "negative_by_role": self.scores.by_role_of(self.suppressors, negative=True),
            "copy_predictions": list(self.copy_predictions),
            "negative_predictions": list(self.negative_predictions),
            "importance_source": self.importance.source,
            "attention_vs_projection": list(self.attention_vs_projection),
        }

    def summary(self) -> list[str]:
        return [f"top copying heads (top {self.top_k}): " + _heads(self.copiers, ".1%"),
                "top negative copying heads: " + _heads(self.suppressors, ".1%"),
                "attention vs output, Pearson r: " + ", ".join(f"{s.head.name} {s.pearson_r:+.2f}"
                                                               for s in self.attention_vs_projection),
                *([f"top successor heads: {_heads(self.successors.top(3), '.1%') or 'none above 0%'}"] if self.successors else [])]


@dataclass(frozen=True)
class CircuitDiscoveryReport:
    template: ClassVar[str] = "circuit_discovery"
    runner: GraphRunner
    roles: Mapping[str, HeadRole]
    walk: PathWalk
    threshold: float | int
    top_edges: Sequence[EdgeScores]  # EAP and EAP-IG
    faithfulness_curves: Sequence[FaithfulnessByEdges]
    proposal: CircuitProposal
    ablation_kinds: Mapping[str, Sequence[NormalisedFaithfulness]]
    circuit_file: Path | None

    def section(self) -> dict[str, Any]:
        graph = self.runner.graph
        return {
            "graph": {"senders": graph.n_senders, "receivers": graph.n_receivers, "edges": graph.n_edges},
            "roles": dict(self.roles),
            "edges": [e.to_dict() for e in self.walk.edges],
            "walk": {"threshold": self.threshold, "receivers": list(self.walk.receivers),
                     "input_edges": [e.to_dict() for e in self.walk.input_edges],
                     "unexplored": list(self.walk.unexplored)},
            "top_edges": {s.method: [e.to_dict() for e in s.top(20)] for s in self.top_edges},
            "faithfulness_curves": list(self.faithfulness_curves),
            "proposed_circuit": self.proposal.to_dict(),
            "ablation_kinds": {kind: [f.to_dict() for f in rows] for kind, rows in self.ablation_kinds.items()},
            "circuit_file": self.circuit_file.name if self.circuit_file else None,
        }

    def summary(self) -> list[str]:
        return ["roles: " + (", ".join(f"{h} {r.label}" for h, r in self.roles.items() if r.role != "unknown")
                             or "none found"),
                f"path patching: {len(self.walk.edges)} edges >= {self.threshold}; " + ", ".join(
                    f"{c.method} CPR {c.cpr:.2f} CMD {c.cmd:.2f}" for c in self.faithfulness_curves),
                f"proposed circuit: {len(self.proposal.circuit)} edges, faithfulness " + ", ".join(
                    f"{kind} {f.faithfulness:.2f}" for kind, f in self.proposal.faithfulness.items())
                + (f" ({self.proposal.added} EAP-IG edges added to the walk's {len(self.proposal.walked)})"
                   if self.proposal.added else " (the walk's own)")]


@dataclass(frozen=True)
class CircuitReport:
    template: ClassVar[str] = "circuit"
    ablation: MeanAblation
    importance: HeadImportance
    warning: str | None  # the evaluator's, about the full model's metric
    choice: CandidateChoice
    candidate: CircuitFaithfulness
    curve: FaithfulnessCurve
    target: float  # the faithfulness the automatic candidate must reach
    minimality: Minimality
    random_baseline: RandomBaseline
    comparison: Sequence[CircuitFaithfulness]  # the candidate first, then the other circuits
    from_file: CircuitFileResult

    def section(self) -> dict[str, Any]:
        return {
            "reference": self.ablation.reference,
            "importance_source": self.importance.source,
            "warning": self.warning,
            "choice": self.choice,
            "candidate": self.candidate,
            "curve": self.curve,
            "minimality": self.minimality,
            "random_baseline": self.random_baseline,
            "comparison": list(self.comparison),
            "from_file": self.from_file,
        }

    def summary(self) -> list[str]:
        candidate = self.candidate
        lines = [f"{candidate.circuit.name}: faithfulness {candidate.faithfulness:.2f}"
                 + ("" if candidate.ci95 is None else f" (95% interval {candidate.ci95})")
                 + f", empty circuit {candidate.empty_faithfulness:.2f}; {self.curve.describe_needed(self.target)}",
                 self.random_baseline.describe(), self.from_file.describe()]
        others = self.comparison[1:]
        return lines + (["beside: " + ", ".join(f"{r.circuit.name} {r.faithfulness:.2f}" for r in others)]
                        if others else [])


@dataclass(frozen=True)
class MlpNeuronsReport:
    template: ClassVar[str] = "mlp_neurons"
    mlp_out: PatchingResult
    layer: int
    neurons: NeuronPatching
    top_neurons: Sequence[NeuronWrites]
    activations: NeuronActivations
    top_k: int  # neurons in the tables and activation plots

    def section(self) -> dict[str, Any]:
        return {
            "mlp_out": self.mlp_out,
            "layer": self.layer,
            "neurons": self.neurons.to_dict(k=self.top_k),
            "top_neurons": list(self.top_neurons),
            "activations": self.activations,
        }

    def summary(self) -> list[str]:
        return [f"MLP layer {self.layer}: top neurons " + ", ".join(f"{w.name} {w.effect:+.3f}" for w in self.top_neurons[:5])
                + f"; attribution vs exact r = {self.neurons.pearson:.2f}"]


@dataclass(frozen=True)
class VectorArithmeticReport:
    template: ClassVar[str] = "vector_arithmetic"
    layer: int
    component: str
    vector: UpdateVector
    scale: float | int
    vector_arithmetic: VectorArithmetic

    def section(self) -> dict[str, Any]:
        return {"layer": self.layer, "component": self.component, "vector_arithmetic": self.vector_arithmetic}

    def summary(self) -> list[str]:
        vector, result = self.vector, self.vector_arithmetic
        return [f"{vector.source} (norm {vector.norm:.2f}) added x{self.scale} after layer(s) "
                f"{', '.join(map(str, result.layers))}: "
                f"answer on top {result.before.top_share:.0%} -> {result.after.top_share:.0%} "
                f"(random vectors of the same norm: {result.random_top_share:.0%})"]


@dataclass(frozen=True)
class CompareReport:
    template: ClassVar[str] = "compare"
    results: Sequence[compare.TaskResults]
    measure: str  # the importance that defines the head sets
    head_sets: compare.HeadSets
    dla_head_sets: compare.HeadSets
    patching_correlations: Tensor  # [task, task]
    shared_heads: compare.SharedHeads
    shared_head_scores: Mapping[str, Mapping[str, Mapping[str, float]]]
    differences: Sequence[compare.Difference]
    circuits: compare.CircuitComparison
    top_k: int

    def section(self) -> dict[str, Any]:
        return {
            "tasks": [{"task": r.task, "model": r.model, "n_prompts": r.n_prompts, "metric": r.metric}
                      for r in self.results],
            "measure": self.measure,
            "head_sets": self.head_sets,
            "dla_head_sets": self.dla_head_sets,
            "patching_correlations": self.patching_correlations.tolist(),
            "shared_heads": self.shared_heads,
            "shared_head_scores": self.shared_head_scores,
            "differences": list(self.differences),
            "circuits": self.circuits,
        }

    def summary(self) -> list[str]:
        shared, circuits = self.shared_heads, self.circuits
        return [f"top {self.top_k} heads by {compare.MEASURE_NAMES[self.measure]} in every task: "
                + (", ".join(shared.shared) or "none"),
                f"mean Jaccard index between tasks: {self.head_sets.mean_jaccard:.2f}; "
                + f"mean correlation of patching maps: {compare.mean_off_diagonal(self.patching_correlations):.2f}",
                compare.describe_differences(list(self.differences)),
                "same role in every task: " + (", ".join(circuits.same_role) or "none")
                + "; edges in every task's circuit: " + (", ".join(circuits.shared_edges) or "none")]


@dataclass(frozen=True)
class SweepReport:
    template: ClassVar[str] = "sweep"
    sweep: sweep_analysis.SweepResults

    def section(self) -> dict[str, Any]:
        s = self.sweep
        return {  # the keys written out: tests/test_results.py reads them from here
            "models": list(s.models), "tasks": list(s.tasks),
            "pairs": [p.to_dict() for by_task in s.pairs.values() for p in by_task.values()],
            "roles": {task: sweep_analysis.role_table(s, task) for task in s.tasks},
            "task_overlap": {model: sweep_analysis.task_overlap(s, model).tolist() for model in s.models},
            "model_overlap": {task: sweep_analysis.model_overlap(s, task).tolist() for task in s.tasks},
        }

    def summary(self) -> list[str]:
        s = self.sweep
        landed = sum(len(by_task) for by_task in s.pairs.values())
        lines = [f"{landed} of {len(s.tasks) * len(s.models)} task x model pairs landed: {', '.join(s.tasks)} on "
                 f"{', '.join(s.models)}"]
        for task in s.tasks:
            sizes = ", ".join(f"{m} {p.circuit_edges}" for m in s.models
                              if (p := s.pair(task, m)) is not None and p.circuit_edges is not None)
            if sizes:
                lines.append(f"{task}: proposed circuit edges by model: {sizes}")
        return lines
