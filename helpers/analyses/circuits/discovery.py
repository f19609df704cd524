"""Circuit discovery: which paths carry the task, walked down from the logits by exact path patching, where
each node acts, the circuit that does the task, and the circuit as a file.

The walk (the IOI paper's procedure, automated). Start from the logits: the heads whose direct path to
them carries at least ``threshold`` of the clean-corrupted difference are the first receivers (at most
``start`` of them, strongest first). For each receiver, patch the path from every sender into each of
its inputs (query, key and value for a head); every path that carries at least ``threshold`` is an edge
of the circuit, and its sender, if a head or an MLP not yet explored, becomes a receiver in turn. Every
node the walk adds is explored (unless ``max_receivers`` stops it first, which the walk records), so each
input of each node either reaches the input through edges the walk kept, or is closed by the threshold:
no sender's path into it carries ``threshold``. Such an input still reads something in the circuit: it
gets its measured edge from the input (the embeddings), so that no node of the circuit reads only
ablated outputs (a node nothing feeds is pruned away with every edge out of it, which is how a walk that
keeps only the edges between the heads it found loses the task).

The proposal (:func:`propose_circuit`). The walked circuit is run under each ablation. Where it keeps less
than ``target`` of the task under resample ablation, EAP-IG's edges are added by rank, and the fewest that
reach the target (found by doubling, then bisection) make the proposed circuit; it records how it was
built.

Where a node acts: the word role (a placeholder's word, or ``end`` for the final position) at which
its output matters most (:func:`acting_positions`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from helpers.analyses.ablations import ABLATION_KINDS, AblationKind
from helpers.analyses.circuits.faithfulness import NormalisedFaithfulness
from helpers.analyses.circuits.graph import Edge, EdgeCircuit, EdgeScores
from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.analyses.circuits.head_roles import EFFECT, HeadRole
from helpers.errors import NotApplicable
from helpers.models.forward import UnsupportedArchitecture
from helpers.results import write_text

CIRCUIT_FILE_FORMAT = "circuit-notebooks circuit, MIB-compatible"


@dataclass(frozen=True)
class PathWalk:
    """The edges the walk found (method ``path_patching``), the receivers it explored in order, and every
    path effect it measured (receiver input -> sender -> effect), for the maps. ``input_edges``: for each
    explored input that the threshold closed (no edge into it carries ``threshold``), its measured edge from
    the input (method ``path_patching, input``); ``unexplored``: nodes the walk found but did not explore,
    ``max_receivers`` having stopped it (empty when the walk is complete)."""

    edges: tuple[Edge, ...]
    receivers: tuple[str, ...]
    maps: dict[str, dict[str, float]]
    threshold: float
    input_edges: tuple[Edge, ...] = ()
    unexplored: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every node the walk added was explored (each of its inputs measured)."""
        return not self.unexplored

    @property
    def nodes(self) -> list[str]:
        found = {e.sender for e in self.edges} | {e.receiver for e in self.edges}
        return sorted(found, key=_node_order)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "receivers": list(self.receivers), "maps": self.maps,
                "edges": [e.to_dict() for e in self.edges], "input_edges": [e.to_dict() for e in self.input_edges],
                "unexplored": list(self.unexplored)}


def _node_order(name: str) -> tuple[int, int, int]:
    if name == "input":
        return (-1, 0, 0)
    if name == "logits":
        return (10**6, 0, 0)
    if name.startswith("MLP"):
        return (int(name[3:]), 1, 0)
    layer, head = name[1:].split("H")
    return (int(layer), 0, int(head))


def walk_paths(runner: GraphRunner, *, threshold: float = EFFECT, start: int = 5,
               max_receivers: int | None = None) -> PathWalk:
    """The path-patching walk of the module docstring: every node it adds is explored, unless
    ``max_receivers`` (a budget: on GPT-2 small with 64 prompts each receiver takes about 1-3 min) stops it
    first."""
    graph = runner.graph
    direct = runner.path_patching("logits")
    first = sorted((n for n, v in direct.items() if n != "input" and abs(v) >= threshold), key=lambda n: -abs(direct[n]))
    edges = [Edge(n, "logits", None, direct[n], "path_patching") for n in first[:start]]
    edges += [Edge("input", "logits", None, direct["input"], "path_patching")] if abs(direct.get("input", 0.0)) >= threshold else []
    maps: dict[str, dict[str, float]] = {"logits": direct}
    input_edges = []
    queue, explored = list(first[:start]), []
    while queue and (max_receivers is None or len(explored) < max_receivers):
        receiver = queue.pop(0)
        explored.append(receiver)
        inputs = [f"{receiver}<{kind}>" for kind in "qkv"] if receiver.startswith("L") else [receiver]
        for name in inputs:
            effects = runner.path_patching(name)
            maps[name] = effects
            node, kind = graph.receiver_parts(graph.receiver_index(name))
            kept = [(sender, value) for sender, value in sorted(effects.items(), key=lambda kv: -abs(kv[1]))
                    if abs(value) >= threshold]
            for sender, value in kept:
                edges.append(Edge(sender, node, kind, value, "path_patching"))
                if sender != "input" and sender not in explored and sender not in queue:
                    queue.append(sender)
            if not kept:  # closed by the threshold: it still reads the input
                input_edges.append(Edge("input", node, kind, effects["input"], "path_patching, input"))
    runner.release_clean_inputs()  # what comes next (EAP) has its own peak; path patching recomputes them
    return PathWalk(tuple(edges), tuple(explored), maps, threshold, tuple(input_edges), tuple(queue))


def acting_positions(runner: GraphRunner, nodes: Sequence[str], attribution: EdgeScores | None = None) -> dict[str, str]:
    """For each node (head or MLP), the word role where its output matters most: the largest mean (over
    prompts) absolute attribution of its output at that position, through all its edges, from
    ``attribution`` (an EAP / EAP-IG's :attr:`helpers.analyses.circuits.graph.EdgeScores.positions`); without one, where its
    output differs most between the clean and the corrupted run. ``input`` acts everywhere."""
    prompts = runner.prompts
    if attribution is not None and attribution.positions is not None:
        delta = attribution.positions.abs()
    else:
        delta = (runner.clean.outputs - runner.corrupted.outputs).norm(dim=-1)
    roles: dict[str, list[tuple[int, int]]] = {}
    for index, words in enumerate(prompts.word_positions):
        for word in words:
            roles.setdefault(word.role, []).append((index, word.position))
        roles.setdefault("end", []).append((index, int(prompts.final_pos[index])))
    out = {}
    for node in nodes:
        if node in ("input", "logits"):
            out[node] = "all" if node == "input" else "end"
            continue
        sender = runner.graph.sender_index(node)
        mean = {role: float(torch.stack([delta[b, p, sender] for b, p in where]).mean()) for role, where in roles.items()}
        out[node] = max(mean, key=mean.get) if mean else "end"  # type: ignore[arg-type]
    return out


def position_order(runner: GraphRunner) -> list[str]:
    """Word roles by their mean position in the prompts, ``end`` last."""
    at: dict[str, list[int]] = {}
    for words in runner.prompts.word_positions:
        for word in words:
            at.setdefault(word.role, []).append(word.position)
    return sorted(at, key=lambda r: sum(at[r]) / len(at[r])) + ["end"]


def circuit_of_walk(runner: GraphRunner, walk: PathWalk, *, name: str = "path-patching circuit") -> EdgeCircuit:
    """The walk's edges as a circuit: those that carry the threshold and, for each input the threshold
    closed, its edge from the input."""
    return _circuit_of_edges(runner, [*walk.edges, *walk.input_edges], name, "path_patching")


def _circuit_of_edges(runner: GraphRunner, edges: Sequence[Edge], name: str, method: str) -> EdgeCircuit:
    graph = runner.graph
    found = set()
    for e in edges:
        receiver = e.receiver if e.input is None else f"{e.receiver}<{e.input}>"
        found.add((graph.sender_index(e.sender), graph.receiver_index(receiver)))
    return EdgeCircuit(graph, frozenset(found), name, method)


@dataclass(frozen=True)
class CircuitProposal:
    """The circuit discovery proposes: the walked circuit, its faithfulness under each ablation, and, where
    it falls short of ``target`` under resample ablation, the same with the fewest EAP-IG edges added
    (by rank) that reach it. ``circuit`` is the one to use (and write); ``how`` says how it was built."""

    walked: EdgeCircuit
    walked_faithfulness: dict[str, NormalisedFaithfulness]
    circuit: EdgeCircuit
    faithfulness: dict[str, NormalisedFaithfulness]
    added: int  # EAP-IG edges added to the walked circuit
    target: float
    reached: bool
    how: str
    unexplored: tuple[str, ...] = ()  # the walk's (PathWalk.unexplored)

    def describe(self) -> str:
        """What the notebook says of the proposal, in one paragraph."""
        walked = ", ".join(f"{kind} {f.faithfulness:.2f}" for kind, f in self.walked_faithfulness.items())
        text = f"The walked circuit ({len(self.walked)} edges) keeps {walked} (faithfulness by ablation)"
        if self.unexplored:
            text = (f"The walk stopped at its budget (max_receivers) before exploring {', '.join(self.unexplored)}, so "
                    f"their inputs were not measured. " + text)
        if not self.added:
            return text + f": it reaches the target {self.target:.2f} under resample ablation."
        final = ", ".join(f"{kind} {f.faithfulness:.2f}" for kind, f in self.faithfulness.items())
        if self.reached:
            return (text + f"; it falls short of the target {self.target:.2f} under resample ablation, so "
                    f"{self.added} EAP-IG edges were added (by rank): {len(self.circuit)} edges keep {final}.")
        return (text + f"; not even with every EAP-IG edge added does it reach {self.target:.2f} "
                f"({len(self.circuit)} edges keep {final}).")

    def under_each_ablation(self, runner: GraphRunner, others: Sequence[EdgeCircuit]
                            ) -> dict[str, list[NormalisedFaithfulness]]:
        """The proposed circuit, the walked one where edges were added to it, and ``others``, under each
        ablation: the proposal's own runs reused, only ``others`` run."""
        known = [self.faithfulness, *([self.walked_faithfulness] if self.added else [])]
        return {kind: [*(runs[kind] for runs in known), *(runner.evaluate(c, kind) for c in others)]
                for kind in ABLATION_KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {"walked_edges": len(self.walked), "unexplored": list(self.unexplored),
                "walked_faithfulness": {k: f.to_dict() for k, f in self.walked_faithfulness.items()},
                "edges": len(self.circuit), "faithfulness": {k: f.to_dict() for k, f in self.faithfulness.items()},
                "added_eap_ig_edges": self.added, "target": self.target, "reached": self.reached, "how": self.how}


def propose_circuit(runner: GraphRunner, walk: PathWalk, attribution: EdgeScores, *, target: float = 0.8,
                    ablation: AblationKind = "resample") -> CircuitProposal:
    """The walked circuit (:func:`circuit_of_walk`) if it keeps ``target`` of the task under ``ablation``;
    else with the fewest of ``attribution``'s edges (by rank, those not in it) that reach it: doubling the
    count until one does, then bisecting between the last that did not and the first that did (the fewest
    found so; faithfulness need not rise with every edge). Both are run under every ablation."""
    walked = circuit_of_walk(runner, walk)
    by_kind = {kind: runner.evaluate(walked, kind) for kind in ABLATION_KINDS}
    if by_kind[ablation].faithfulness >= target:
        return CircuitProposal(walked, by_kind, walked, by_kind, 0, target, True,
                               f"path-patching walk (threshold {walk.threshold})", walk.unexplored)
    extra = [edge for edge in attribution.ranked() if edge not in walked.edges]

    def with_top(n: int) -> EdgeCircuit:
        return EdgeCircuit(runner.graph, walked.edges | frozenset(extra[:n]),
                           f"path-patching circuit + {n} {attribution.method} edges",
                           f"path_patching + {attribution.method}")

    tried: dict[int, NormalisedFaithfulness] = {}  # each count run once under ``ablation``

    def reaches(n: int) -> bool:
        if n not in tried:
            tried[n] = runner.evaluate(with_top(n), ablation)
        return tried[n].faithfulness >= target

    low, high = 0, 1
    while high < len(extra) and not reaches(high):
        low, high = high, min(2 * high, len(extra))
    reached = reaches(high)
    if reached:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(middle) else (middle, high)
    circuit = with_top(high)
    how = (f"path-patching walk (threshold {walk.threshold}), then the top {high} {attribution.method} edges not in "
           f"it, the fewest found to reach faithfulness {target} under {ablation} ablation" if reached else
           f"path-patching walk (threshold {walk.threshold}) and every {attribution.method} edge; the target {target} "
           f"under {ablation} ablation is not reached")
    final = {kind: tried[high] if kind == ablation else runner.evaluate(circuit, kind) for kind in ABLATION_KINDS}
    return CircuitProposal(walked, by_kind, circuit, final, high, target, reached, how, walk.unexplored)


def write_circuit_file(path: str | Path, circuit: EdgeCircuit, *, scores: EdgeScores | None = None,
                       roles: dict[str, HeadRole] | None = None, task: str | None = None,
                       model: str | None = None, how: str | None = None) -> Path:
    """The circuit as a JSON file in the MIB circuit-track format (``cfg``, ``nodes``, ``edges`` with
    ``score`` and ``in_graph``; our node names in MIB's spelling), plus ``format``, ``name``, ``method``,
    ``task``, ``model``, ``roles`` and ``how_built`` (which MIB's readers ignore). :func:`read_circuit_file` and
    ``circuit.ipynb``'s ``circuit_file`` read it back, as they read MIB's own files."""
    data = {"format": CIRCUIT_FILE_FORMAT, **circuit.to_mib(scores), "task": task, "model": model,
            "roles": {head: role.to_dict() for head, role in (roles or {}).items()}, "how_built": how}
    path = Path(path)
    write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def read_circuit_file(path: str | Path, runner_or_graph: Any) -> EdgeCircuit:
    """A circuit from a file :func:`write_circuit_file` wrote, an MIB circuit file, or one written by hand
    (``{"edges": ["L0H1->L1H2<k>", ...]}``), checked against the model's graph."""
    graph = getattr(runner_or_graph, "graph", runner_or_graph)
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"circuit_file = {str(path)!r}: no such file. Fix: give the path of a circuit "
                                "file, e.g. notebooks/<task>/circuit.json from a run of circuit_discovery") from None
    return EdgeCircuit.from_mib(data, graph, name=data.get("name") or path.stem)


@dataclass(frozen=True)
class CircuitDiagram:
    """The circuit to draw: a networkx graph whose nodes carry ``layer`` (heads at their layer, an MLP half
    a layer later, the input before layer 0, the logits after the last), ``position`` (where the node acts)
    and ``role``, and whose edges carry ``score``, ``input`` (q / k / v or None) and ``method``;
    ``positions`` orders the word roles bottom to top."""

    graph: nx.DiGraph
    positions: tuple[str, ...]
    method: str


def build_diagram(runner: GraphRunner, edges: Sequence[Edge], roles: dict[str, HeadRole], *,
                  attribution: EdgeScores | None = None, method: str = "path_patching") -> CircuitDiagram:
    """The diagram of ``edges`` (e.g. a :class:`PathWalk`'s), nodes labelled with ``roles`` and placed where
    they act (:func:`acting_positions`, from ``attribution``); only nodes on a path to the logits are kept."""
    g = nx.DiGraph()
    names = sorted({e.sender for e in edges} | {e.receiver for e in edges}, key=_node_order)
    acting = acting_positions(runner, [n for n in names if n not in ("input", "logits")], attribution)
    order = position_order(runner)
    n_layers = runner.graph.n_layers
    for name in names:
        if name == "input":
            layer, position = -1.0, "all"
        elif name == "logits":
            layer, position = float(n_layers), "end"
        elif name.startswith("MLP"):
            layer, position = int(name[3:]) + 0.5, acting[name]
        else:
            layer, position = float(name[1:].split("H")[0]), acting[name]
        g.add_node(name, layer=layer, position=position,
                   role=roles[name].role if name in roles else ("mlp" if name.startswith("MLP") else name))
    for e in edges:
        key = (e.sender, e.receiver)
        if g.has_edge(*key):  # several inputs of one receiver: one edge, the inputs listed, the largest score
            data = g.edges[key]
            data["inputs"] = data["inputs"] + ([e.input] if e.input else [])
            data["score"] = max(data["score"], e.score, key=abs)
        else:
            g.add_edge(*key, score=e.score, inputs=[e.input] if e.input else [], method=e.method)
    if "logits" in g:
        keep = nx.ancestors(g, "logits") | {"logits"}
        g = g.subgraph(keep).copy()
    positions = tuple(p for p in ["all", *order] if any(d["position"] == p for _, d in g.nodes(data=True)))
    return CircuitDiagram(g, positions, method)


@dataclass(frozen=True)
class CircuitFileResult:
    """A circuit read from a file, run edge by edge under each ablation (or why it was not)."""

    path: str | None
    circuit: EdgeCircuit | None
    by_ablation: dict[str, list[Any]]
    reason: str | None = None

    def describe(self) -> str:
        if self.circuit is None:
            return f"no circuit file evaluated: {self.reason}"
        parts = ", ".join(f"{kind} {rows[0].faithfulness:.2f}" for kind, rows in self.by_ablation.items())
        return f"{self.circuit.name} ({len(self.circuit)} edges, from {Path(str(self.path)).name}): faithfulness {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": None if self.path is None else Path(self.path).name,
                "edges": None if self.circuit is None else len(self.circuit),
                "faithfulness": {kind: rows[0].to_dict() for kind, rows in self.by_ablation.items()},
                "reason": self.reason}


def evaluate_circuit_file(model: Any, prompts: Any, path: str | Path | None, *, max_rows: int = 16) -> CircuitFileResult:
    """Read a circuit file (:func:`read_circuit_file`) and run it under resample, mean and zero ablation.
    ``path`` None or missing, or a model the graph cannot run (said first: no circuit file would help): the
    result says why and holds no figure."""
    try:
        runner = GraphRunner(model, prompts, max_rows=max_rows)
    except (NotApplicable, UnsupportedArchitecture) as err:
        return CircuitFileResult(None if path is None else str(path), None, {}, str(err))
    if path is None:
        return CircuitFileResult(None, None, {}, "none given, and this run wrote none (run circuit_discovery first)")
    circuit = read_circuit_file(path, runner)
    return CircuitFileResult(str(path), circuit, {kind: [runner.evaluate(circuit, kind)] for kind in ABLATION_KINDS})
