"""Circuits as graphs of edges (helpers/analyses/circuits/graph.py), against independent computations through the model's
hooks and against a model whose circuit is known.

- The graph's own forward pass with every edge kept is the model's clean run, with none (resample) the
  corrupted run; a node circuit under each ablation equals today's hook-based circuit evaluation.
- Exact path patching equals the IOI paper's algorithm run step by step through the model's hooks;
  EAP equals gradients taken through the model's hooks; a run with edges ablated equals the same
  ablation done by hooks, for random sets of edges.
- On the demo model (a hand-set IOI circuit: duplicate-token L0H1 -> S-inhibition L1H2 through its key
  -> name mover L2H0 through its query) with the ABC corruption: path patching finds exactly the planted
  paths and input kinds, and EAP-IG ranks the planted edges first.

The hook references need TransformerLens's per-head query/key/value inputs (the bridge has none for
GPT-Neo, GPT-J and OPT, whose attention it delegates to transformers) and run on GPT-2, GPT-NeoX, Llama
and Gemma (see HOOK_REFERENCE); every family is checked by the runs against the model and against the
circuit notebook's hook-based evaluation. Heads with grouped keys and values have one key and value input each in the
graph but share one in the hooks: there the references are compared with the group's edges together.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_FORWARD, FLOAT32_GRADIENT, FLOAT32_PATCHING, SEEDS, assert_matches
from reference import hook_circuit_metric, hook_eap_scores, hook_path_patching

from helpers import results as results_format
from helpers.analyses import ablations
from helpers.analyses.ablations import ABLATION_KINDS
from helpers.analyses.circuits import discovery, edge_attribution, head_roles
from helpers.analyses.circuits import head_circuits as circuit
from helpers.analyses.circuits.faithfulness import MIB_FRACTIONS, FaithfulnessByEdges
from helpers.analyses.circuits.graph import EdgeCircuit, Graph, GraphError
from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.errors import NotApplicable
from helpers.figures import discovery as discovery_figures
from helpers.models.architectures import describe
from helpers.models.load import load_model
from helpers.models.toys import PLANTED_IOI, TOY_ARCHITECTURES, build_toy_model, ensure_demo_model
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet, build_prompts, load_task

NO_SPLIT_INPUTS = {"gpt_neo", "gptj", "opt"}  # the bridge has no per-head query/key/value inputs for these
# The hook references are slow: they run on one model per kind of arithmetic (LayerNorm and learned
# positions; parallel blocks and partial rotary; RMSNorm, gated MLPs and grouped keys and values; one
# key/value head and a scaled embedding). Mistral and Qwen2 are Llama's arithmetic with local windows,
# which the runs against the model (full, empty, node circuits) cover.
HOOK_REFERENCE = {"gpt2", "gpt_neox", "llama", "gemma"}
EDGE_ARCHITECTURES = [a for a in TOY_ARCHITECTURES if a != "gemma2"]


@dataclass(frozen=True)
class Toy:
    architecture: str
    model: Any
    prompts: PromptSet
    runner: GraphRunner

    @property
    def group(self) -> int:
        return describe(self.model).group_size


@pytest.fixture(scope="module", params=EDGE_ARCHITECTURES)
def toy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Toy:
    architecture = request.param
    directory = build_toy_model(tmp_path_factory.mktemp(architecture), architecture=architecture,
                                tokenizer=gpt2_tokenizer, weight_std=0.3, seed=SEEDS[architecture])
    model = load_model(str(directory), device="cpu")
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=8), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    return Toy(architecture, model, prompts, GraphRunner(model, prompts))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> tuple[Any, PromptSet, GraphRunner]:
    model = load_model(str(ensure_demo_model(tmp_path_factory.mktemp("demo") / "demo")), device="cpu")
    prompts = build_prompts(load_task("ioi_abc").with_overrides(n_prompts=16), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    return model, prompts, GraphRunner(model, prompts)


def model_metric(toy: Toy, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return toy.prompts.metric(at_final_pos(toy.model(tokens), toy.prompts.final_pos)).float()


# -- the graph -----------------------------------------------------------------------------------------


def test_the_graph_has_the_edges_eap_ig_and_mib_count() -> None:
    # GPT-2 small's graph in the MIB circuit track's files (circuits/ioi-eap-ig.json) has 32491 edges
    assert Graph(12, 12).n_edges == 32491
    small = Graph(2, 2)
    assert small.senders == ("input", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1")
    assert small.receivers[:7] == ("L0H0<q>", "L0H1<q>", "L0H0<k>", "L0H1<k>", "L0H0<v>", "L0H1<v>", "MLP0")
    # a head reads the layers before its own, a sequential MLP also its own layer's heads, a parallel one not
    assert small.parse_edge("L0H1->L1H0<v>") == (2, small.head_receiver(1, 0, "v"))
    assert small.parse_edge("L0H1->MLP0") == (2, small.mlp_receiver(0))
    with pytest.raises(GraphError, match="does not exist: MLP0 reads only what is computed before it"):
        Graph(2, 2, parallel=True).parse_edge("L0H1->MLP0")
    with pytest.raises(GraphError, match="does not exist"):
        small.parse_edge("L1H0->L0H0<q>")
    with pytest.raises(GraphError, match="'L5H0' is not a node.*Fix"):
        small.parse_edge("L5H0->logits")
    # layer 0: 6 head inputs read 1 sender, MLP0 reads 3; layer 1: 6 head inputs read 4, MLP1 reads 6;
    # the logits read all 7. A parallel MLP reads its layer's input only: 2 fewer senders each.
    assert small.n_edges == 6 * 1 + 3 + 6 * 4 + 6 + 7
    assert Graph(2, 2, parallel=True).n_edges == small.n_edges - 2 - 2


def test_a_circuit_round_trips_through_the_mib_format_and_reads_hand_written_names() -> None:
    graph = Graph(2, 2)
    edges = ["input->L0H1<q>", "L0H1->L1H0<k>", "L1H0->logits", "MLP0->L1H1<v>"]
    circuit_ = EdgeCircuit(graph, frozenset(graph.parse_edge(e) for e in edges), "hand")
    data = json.loads(json.dumps(circuit_.to_mib()))
    assert data["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False}
    assert data["edges"]["a0.h1->a1.h0<k>"] == {"score": 1.0, "in_graph": True}
    assert data["edges"]["input->m0"]["in_graph"] is False and len(data["edges"]) == graph.n_edges
    assert data["nodes"]["a0.h1"]["in_graph"] and not data["nodes"]["a0.h0"]["in_graph"]
    assert EdgeCircuit.from_mib(data, graph).edges == circuit_.edges
    # a list of names, ours or MIB's
    listed = EdgeCircuit.from_mib({"edges": ["a0.h1->a1.h0<k>", "L1H0->logits"]}, graph)
    assert listed.edges == {graph.parse_edge("L0H1->L1H0<k>"), graph.parse_edge("L1H0->logits")}
    with pytest.raises(GraphError, match="cfg.n_heads is 12 but the model has 2"):
        EdgeCircuit.from_mib({"cfg": {"n_heads": 12}, "edges": []}, graph)
    with pytest.raises(GraphError, match="needs 'edges'"):
        EdgeCircuit.from_mib({"nodes": {}}, graph)


def test_pruning_drops_edges_that_cannot_reach_the_logits_or_carry_nothing() -> None:
    graph = Graph(2, 2)
    names = ["input->L0H0<q>", "L0H0->L1H0<v>", "L1H0->logits",  # a path
             "input->L0H1<k>",  # into a head whose output goes nowhere
             "L0H1->L1H1<q>", "L1H1->logits"]  # out of that head (it is not fed... it is: input->L0H1<k>)
    pruned = EdgeCircuit(graph, frozenset(graph.parse_edge(n) for n in names), "c").pruned()
    assert {graph.edge_name(s, r) for s, r in pruned.edges} == set(names)  # L0H1 is fed and used: all stay
    dangling = EdgeCircuit(graph, frozenset(graph.parse_edge(n) for n in ["input->L0H1<k>", "L0H0->L1H0<v>",
                                                                          "L1H0->logits"]), "d").pruned()
    # L0H1 reaches nothing; L0H0 is fed by nothing, so L1H0's value input carries nothing either
    assert dangling.edges == frozenset()


def test_areas_are_mibs_trapezoids() -> None:
    curve = FaithfulnessByEdges("m", "resample", (0.0, 0.5, 1.0), (0, 5, 10), (0.0, 0.5, 1.0))
    assert curve.cpr == pytest.approx(0.5) and curve.cmd == pytest.approx(0.5)
    flat = FaithfulnessByEdges("m", "resample", (0.1, 1.0), (1, 10), (1.2, 1.0))
    assert flat.cpr == pytest.approx(0.9 * 1.1) and flat.cmd == pytest.approx(0.9 * 0.1)


# -- runs against the model ---------------------------------------------------------------------------------


def test_every_edge_kept_is_the_clean_run_and_none_the_corrupted_run(toy: Toy) -> None:
    graph = toy.runner.graph
    full = toy.runner.run(graph.real.float())
    empty = toy.runner.run(torch.zeros(graph.n_senders, graph.n_receivers), "resample")
    assert_matches(full, model_metric(toy, toy.prompts.clean_tokens), FLOAT32_FORWARD, what=f"{toy.architecture} full")
    assert_matches(empty, model_metric(toy, toy.prompts.corrupted_tokens), FLOAT32_FORWARD,
                   what=f"{toy.architecture} empty")


def test_the_clean_inputs_path_patching_recomputes_are_the_clean_runs_to_the_bit(toy: Toy) -> None:
    runner = toy.runner
    assert runner.clean.resid_pre is None and runner.clean.q is None  # not kept by the run every analysis reads
    inputs = runner.exact.clean_inputs
    assert inputs.outputs is None  # the clean run's outputs are not kept twice
    assert torch.equal(inputs.final, runner.clean.final) and torch.equal(inputs.per_prompt, runner.clean.per_prompt)
    assert torch.equal(inputs.resid_pre[0], runner.clean.outputs[:, :, 0])  # the embeddings
    n_layers = runner.graph.n_layers
    assert inputs.resid_pre.shape[0] == inputs.mlp_in.shape[0] == inputs.q.shape[0] == n_layers
    receiver = "L0H0<k>"  # its patch runs the later layers from the clean keys and values
    before = runner.path_patching(receiver)
    runner.release_clean_inputs()
    assert "exact" not in vars(runner)  # exact patching's clean inputs, and its keys and values with them
    assert runner.path_patching(receiver) == before  # recomputed, the same floats


def test_a_node_circuit_under_each_ablation_is_the_circuit_notebooks_hook_evaluation(toy: Toy) -> None:
    """EdgeCircuit.from_heads ablates a head's output for every reader, as the circuit notebook's hooks on
    hook_z do: mean (per template and position over the corrupted prompts), resample (each prompt's
    corrupted z) and zero. Two prompts per template, so that a template's mean is not one prompt's run."""
    model = toy.model
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=16), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    runner = GraphRunner(model, prompts)
    heads = ["L0H1", "L1H0", "L1H3"]
    graph = runner.graph
    reference = ablations.reference_prompts("corrupted", prompts)
    mean = circuit.compute_mean_ablation(model, prompts, reference)
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.corrupted_tokens, names_filter=lambda n: n.endswith("hook_z"))
    resample = torch.stack([cache[f"blocks.{layer}.attn.hook_z"] for layer in range(graph.n_layers)])
    means = {"mean": mean.means, "resample": resample, "zero": torch.zeros_like(mean.means)}
    kept = circuit.parse_circuit(heads, name="c", n_layers=graph.n_layers, n_heads=graph.n_heads)
    for kind in ABLATION_KINDS:
        hooks = circuit.CircuitEvaluator(model, prompts, circuit.MeanAblation(means[kind], kind)).evaluate(kept)
        ours = runner.evaluate(EdgeCircuit.from_heads(graph, heads, name="c"), kind, prune=False)
        assert abs(ours.metric - hooks.metric) <= FLOAT32_PATCHING.factor * (1 + abs(hooks.metric)), (
            f"{toy.architecture} {kind}: {ours.metric} vs {hooks.metric}")
        # the notebook's empty circuit ablates every head (the input and MLPs stay): our node circuit of no head
        no_head = runner.evaluate(EdgeCircuit.from_heads(graph, [], name="none"), kind, prune=False)
        assert abs(no_head.metric - hooks.empty_metric) <= FLOAT32_PATCHING.factor * (1 + abs(hooks.empty_metric))
    assert len({round(runner.evaluate(EdgeCircuit.from_heads(graph, heads, name="c"), k, prune=False).metric, 4)
                for k in ABLATION_KINDS}) == 3, "the three ablations give three different figures"


def paths_to_check(toy: Toy) -> list[tuple[str, str]]:
    """(sender, receiver) pairs compared: every input kind and every kind of sender (the input, heads of
    both layers, both MLPs). Heads are indexed as the hooks lay them out (a key or value input of a
    grouped model is its key/value head's, read by every head of the group)."""
    kv_head = min(1, describe(toy.model).n_kv_heads - 1)
    into_layer_1 = [(s, r) for r in ("L1H1<q>", f"L1H{kv_head}<k>", "L1H0<v>") for s in ("input", "L0H2", "L0H0", "MLP0")]
    pairs = into_layer_1 + [(s, "MLP0") for s in ("input", "L0H1", "L0H3")] + [
        (s, "MLP1") for s in ("input", "MLP0", "L1H2")] + [(s, "logits") for s in ("input", "L0H0", "MLP0", "L1H2", "MLP1")]
    graph = toy.runner.graph  # parallel blocks: an MLP does not read its own layer's heads
    return [(s, r) for s, r in pairs if graph.real[graph.sender_index(s), graph.receiver_index(r)]]


def ours_like_the_hooks(toy: Toy, sender: str, receiver: str) -> float:
    """Our effect of the path as the hooks see it: a grouped key/value input is every head of its group's."""
    runner, graph = toy.runner, toy.runner.graph
    if receiver.endswith(("<k>", "<v>")) and toy.group > 1:
        layer, kv_head = (int(p) for p in receiver.split("<")[0][1:].split("H"))
        keep = graph.real.float().clone()
        for head in range(kv_head * toy.group, (kv_head + 1) * toy.group):
            keep[graph.sender_index(sender), graph.receiver_index(f"L{layer}H{head}{receiver[-3:]}")] = 0.0
        return float(runner.effect(runner.run(keep, "resample")))
    return runner.path_patching(receiver, [sender])[sender]


def test_exact_path_patching_is_the_ioi_papers_algorithm_through_the_models_hooks(toy: Toy) -> None:
    if toy.architecture not in HOOK_REFERENCE:
        pytest.skip(f"{toy.architecture}: " + ("the bridge has no per-head query/key/value inputs"
                                               if toy.architecture in NO_SPLIT_INPUTS else "see HOOK_REFERENCE"))
    ours, hooks, names = [], [], []
    for sender, receiver in paths_to_check(toy):
        ours.append(ours_like_the_hooks(toy, sender, receiver))
        hooks.append(hook_path_patching(toy.model, toy.prompts, sender, receiver))
        names.append(f"{sender}->{receiver}")
    assert_matches(torch.tensor(ours), torch.tensor(hooks), FLOAT32_PATCHING, what=f"{toy.architecture} path patching")


def test_eap_is_the_gradient_through_the_models_hooks(toy: Toy) -> None:
    if toy.architecture not in HOOK_REFERENCE:
        pytest.skip(f"{toy.architecture}: " + ("the bridge has no per-head query/key/value inputs"
                                               if toy.architecture in NO_SPLIT_INPUTS else "see HOOK_REFERENCE"))
    graph, eap = toy.runner.graph, toy.runner.eap()
    reference = hook_eap_scores(toy.model, toy.prompts)
    ours, hooks = [], []
    for name, value in reference.items():
        sender, receiver = name.split("->")
        if receiver.endswith(("<k>", "<v>")) and toy.group > 1:  # the group's heads together
            layer, kv_head = (int(p) for p in receiver.split("<")[0][1:].split("H"))
            heads = range(kv_head * toy.group, (kv_head + 1) * toy.group)
            ours.append(sum(float(eap.scores[graph.parse_edge(f"{sender}->L{layer}H{h}{receiver[-3:]}")]) for h in heads))
        else:
            ours.append(float(eap.scores[graph.parse_edge(name)]))
        hooks.append(value)
    assert_matches(torch.tensor(ours), torch.tensor(hooks), FLOAT32_GRADIENT, what=f"{toy.architecture} EAP")


def test_a_run_with_random_edges_ablated_is_the_same_ablation_through_hooks(toy: Toy) -> None:
    if toy.architecture not in HOOK_REFERENCE:
        pytest.skip(f"{toy.architecture}: " + ("the bridge has no per-head query/key/value inputs"
                                               if toy.architecture in NO_SPLIT_INPUTS else "see HOOK_REFERENCE"))
    runner, graph = toy.runner, toy.runner.graph
    rng = random.Random(0)
    edges = [(int(s), int(r)) for s, r in zip(*torch.nonzero(graph.real, as_tuple=True))]
    for zero in (False, True):
        # Zeroing every edge into a receiver leaves it 0 / 0 for its norm: exactly 0 in our sums, but the
        # rounding of "stream - stream" through the hooks, which RMSNorm magnifies. So under zero
        # ablation the layer-0 heads (whose one sender is the input) keep their edges.
        candidates = [(s, r) for s, r in edges if not (zero and graph.prefix[r] == 1)]
        names = {graph.edge_name(s, r) for s, r in rng.sample(candidates, len(edges) // 3)}
        keep = graph.real.float().clone()
        for name in names:
            sender, receiver = name.split("->")
            if receiver.endswith(("<k>", "<v>")) and toy.group > 1:  # hooks: kv head of that index, whole group
                layer, kv_head = (int(p) for p in receiver.split("<")[0][1:].split("H"))
                if kv_head * toy.group >= graph.n_heads:
                    continue
                for head in range(kv_head * toy.group, (kv_head + 1) * toy.group):
                    keep[graph.parse_edge(f"{sender}->L{layer}H{head}{receiver[-3:]}")] = 0.0
            else:
                keep[graph.parse_edge(name)] = 0.0
        names = {n for n in names if not (n.endswith(("<k>", "<v>")) and toy.group > 1 and int(
            n.split("->")[1].split("<")[0].split("H")[1]) * toy.group >= graph.n_heads)}
        assert not zero or bool(keep[:, graph.real.any(dim=0)].sum(dim=0).min() > 0), "a receiver with every edge zeroed"
        ours = runner.run(keep, "zero" if zero else "resample")
        assert_matches(ours, hook_circuit_metric(toy.model, toy.prompts, names, zero=zero), FLOAT32_FORWARD,
                       what=f"{toy.architecture} {'zero' if zero else 'resample'} circuit")


def test_a_model_whose_heads_share_a_norm_after_attention_is_refused(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    """Gemma 2: not applicable (the runner then keeps the notebook with the reason and runs the other templates)."""
    directory = build_toy_model(tmp_path / "gemma2", architecture="gemma2", tokenizer=gpt2_tokenizer, seed=2)
    model = load_model(str(directory), device="cpu")
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=2), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    with pytest.raises(NotApplicable, match="norm after attention couples the heads"):
        GraphRunner(model, prompts)


# -- ground truth: the demo's planted IOI circuit ---------------------------------------------------------------


def test_path_patching_finds_exactly_the_planted_paths_and_input_kinds(demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    _, _, runner = demo
    graph = runner.graph
    heads = [n for n in graph.senders if n.startswith("L")]
    dup, s_inhibition, mover = (f"L{layer}H{head}" for layer, head in (
        PLANTED_IOI.duplicate_token, PLANTED_IOI.s_inhibition, PLANTED_IOI.name_mover))

    def carrying(receiver: str) -> set[str]:
        effects = runner.path_patching(receiver, [h for h in heads if h in graph.senders[: graph.prefix[
            graph.receiver_index(receiver)]]])
        return {h for h, v in effects.items() if abs(v) > 0.1}

    assert carrying(f"{mover}<q>") == {s_inhibition}  # the name mover's query reads the S-inhibition head
    assert carrying(f"{mover}<k>") == set() and carrying(f"{mover}<v>") == set()  # its keys and values: names
    assert carrying(f"{s_inhibition}<k>") == {dup}  # the S-inhibition head's key reads the duplicate-token head
    assert carrying(f"{s_inhibition}<q>") == set() and carrying(f"{s_inhibition}<v>") == set()
    direct = runner.path_patching("logits", heads)
    assert max(direct, key=direct.get) == mover and direct[f"L{PLANTED_IOI.negative_name_mover[0]}H"
                                                           f"{PLANTED_IOI.negative_name_mover[1]}"] < -0.05


def test_eap_ig_ranks_the_planted_edges_first(demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    _, _, runner = demo
    dup, s_inhibition, mover = (f"L{layer}H{head}" for layer, head in (
        PLANTED_IOI.duplicate_token, PLANTED_IOI.s_inhibition, PLANTED_IOI.name_mover))
    top = {e.name for e in runner.eap_ig(steps=5).top(3)}
    assert top == {f"{mover}->logits", f"{s_inhibition}->{mover}<q>", f"{dup}->{s_inhibition}<k>"}


def test_faithfulness_by_edges_at_mibs_sizes(demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    _, _, runner = demo
    scores = runner.eap_ig(steps=5)
    for kind in ABLATION_KINDS:
        curve = runner.faithfulness_by_edges(scores, kind)
        assert curve.fractions == MIB_FRACTIONS and curve.n_edges[-1] == runner.graph.n_edges
        assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)  # every edge: the full model
        assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-5)  # no edge (0.1% of 262 is 0)
    resample = runner.faithfulness_by_edges(scores, "resample")
    # the planted circuit's dozen edges already do the task: faithful from 5% of the edges on
    assert min(resample.faithfulness[5:]) > 0.95 and resample.cpr > 0.9 and resample.cmd < 0.1


# -- discovery on the demo: the walk, the roles, the diagram, the circuit file --------------------------------


@pytest.fixture(scope="module")
def discovered(demo: tuple[Any, PromptSet, GraphRunner]) -> dict[str, Any]:
    model, prompts, runner = demo
    walk = discovery.walk_paths(runner)
    assert "exact" not in vars(runner)  # the walk frees what path patching kept, before EAP runs
    spec = load_task("ioi_abc").with_overrides(n_prompts=16)
    roles = head_roles.assign_roles(head_roles.measure_evidence(model, prompts, runner, spec=spec))
    attribution = runner.eap_ig(steps=5)  # where each node acts
    return {"walk": walk, "roles": roles,
            "diagram": discovery.build_diagram(runner, walk.edges, roles, attribution=attribution)}


def planted_names() -> dict[str, str]:
    return {f"L{layer}H{head}": role for role, (layer, head) in (
        ("previous_token", PLANTED_IOI.previous_token), ("duplicate_token", PLANTED_IOI.duplicate_token),
        ("induction", PLANTED_IOI.induction), ("s_inhibition", PLANTED_IOI.s_inhibition),
        ("name_mover", PLANTED_IOI.name_mover), ("negative_name_mover", PLANTED_IOI.negative_name_mover))}


def test_the_role_labeller_names_every_planted_head_and_calls_the_others_unknown(discovered: dict[str, Any]) -> None:
    roles = discovered["roles"]
    assert len(roles) == 12 and all(r.role in head_roles.ROLE_VOCABULARY for r in roles.values())
    assert {h: r.role for h, r in roles.items() if r.role != "unknown"} == planted_names()
    assert all(r.evidence for r in roles.values())  # never a label without evidence
    mover = roles[f"L{PLANTED_IOI.name_mover[0]}H{PLANTED_IOI.name_mover[1]}"]
    assert any(e.startswith("direct effect +") for e in mover.evidence) and any("copy score" in e for e in mover.evidence)
    s_inhibition = roles[f"L{PLANTED_IOI.s_inhibition[0]}H{PLANTED_IOI.s_inhibition[1]}"]
    assert any("query" in e for e in s_inhibition.evidence) and s_inhibition.confidence == 1.0


def test_the_rules_on_evidence_made_by_hand() -> None:
    E = head_roles.HeadEvidence
    roles = head_roles.assign_roles({
        "mover": E(direct_effect=0.3, copy=0.9),
        "weak": E(direct_effect=0.12, copy=0.9),  # just over the effect threshold: low confidence
        "backup": E(direct_effect=0.02, direct_effect_without_movers=0.25, copy=0.8),
        "inhibitor": E(direct_effect=0.0, query_paths={"mover": 0.4}),
        "misses": E(direct_effect=0.09, copy=0.2),  # nothing passes
        "copier": E(direct_effect=0.0, copy=0.7),
        "both": E(direct_effect=0.0, induction=0.9, previous_token=0.5),
    })
    assert {h: r.role for h, r in roles.items()} == {
        "mover": "name_mover", "weak": "name_mover", "backup": "backup_name_mover", "inhibitor": "s_inhibition",
        "misses": "unknown", "copier": "copy", "both": "induction"}
    # the weakest piece: copy 0.9 / (2 * 0.5) for the mover; effect 0.12 / (2 * 0.1) for the weak one
    assert roles["mover"].confidence == pytest.approx(0.9) and roles["weak"].confidence == pytest.approx(0.6)
    assert roles["misses"].confidence == pytest.approx(1 - 0.45) and "direct effect 0.09" in roles["misses"].evidence[0]
    assert any("previous-token score" in e for e in roles["both"].evidence)  # every piece of evidence listed


def test_the_rules_beyond_ioi_on_evidence_made_by_hand() -> None:
    """A task whose answer is not a word of its prompt (months): heads that write it are answer writers,
    whatever they copy, and successor heads where their OV circuit maps each word to the next; a successor
    head and a copy-suppression head away from the final position (no direct effect) are named by their
    OV scores; IOI's rules name the same evidence as before."""
    E = head_roles.HeadEvidence
    evidence = {
        "writer": E(direct_effect=0.4, successor=0.9),
        "copying_writer": E(direct_effect=0.15, copy=0.8, successor=0.45),
        "plain_writer": E(direct_effect=0.25),  # writes the answer, reads nothing we score
        "against": E(direct_effect=-0.3, negative_copy=0.2),
        "successor": E(direct_effect=0.02, successor=0.75),
        "suppressor": E(direct_effect=0.0, negative_copy=1.0),  # anti-copy, not at the final position
        "inhibitor": E(direct_effect=0.0, query_paths={"writer": 0.3}),
        "misses": E(direct_effect=0.05, successor=0.3),
    }
    roles = head_roles.assign_roles(evidence, names=False)
    assert {h: r.role for h, r in roles.items()} == {
        "writer": "successor", "copying_writer": "answer_writer", "plain_writer": "answer_writer",
        "against": "negative_answer_writer", "successor": "successor", "suppressor": "copy_suppression",
        "inhibitor": "s_inhibition", "misses": "unknown"}
    assert roles["writer"].evidence == ("direct effect +0.40 (>= 0.1)", "successor score 0.90 (>= 0.5)")
    # the weakest piece: the effect 0.4 / (2 * 0.1) is capped at 1, the successor score 0.9 / (2 * 0.5)
    assert roles["writer"].confidence == pytest.approx(0.9)
    assert roles["copying_writer"].evidence == ("direct effect +0.15 (>= 0.1)", "copy score 0.80 (>= 0.5)")
    assert roles["copying_writer"].confidence == pytest.approx(0.75)
    assert roles["successor"].confidence == pytest.approx(0.75) and roles["suppressor"].confidence == 1.0
    assert "successor score 0.30" in roles["misses"].evidence[0]
    assert all(r.role in head_roles.ROLE_VOCABULARY and r.label == head_roles.ROLE_LABELS[r.role] for r in roles.values())
    # on a task of names, the same writers need a copy score or attention to the answer's word to be name movers
    ioi = head_roles.assign_roles(evidence)
    assert ioi["plain_writer"].role == "unknown" and ioi["suppressor"].role == "copy_suppression"
    assert ioi["successor"].role == "successor"


def test_the_walk_follows_the_planted_paths_down_from_the_logits(discovered: dict[str, Any]) -> None:
    walk = discovered["walk"]
    names = {e.name for e in walk.edges}
    dup, s_inhibition, mover = (f"L{layer}H{head}" for layer, head in (
        PLANTED_IOI.duplicate_token, PLANTED_IOI.s_inhibition, PLANTED_IOI.name_mover))
    assert {f"{mover}->logits", f"{s_inhibition}->{mover}<q>", f"{dup}->{s_inhibition}<k>"} <= names
    assert walk.receivers[0] == mover and {s_inhibition, dup} <= set(walk.receivers)
    assert all(abs(e.score) >= walk.threshold for e in walk.edges)
    heads_on_edges = {n for e in walk.edges for n in (e.sender, e.receiver) if n.startswith("L")}
    assert heads_on_edges <= set(planted_names())  # no head without a job is on a path


def test_every_node_of_the_walked_circuit_reads_something_in_each_of_its_inputs(
        discovered: dict[str, Any], demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    """The walk explores every node it adds; each input of each node has a kept edge into it (a path of at
    least the threshold, or, where the threshold closed it, its measured edge from the input), so pruning
    keeps every node the walk found."""
    _, _, runner = demo
    walk, graph = discovered["walk"], runner.graph
    assert walk.complete and not walk.unexplored
    circuit_ = discovery.circuit_of_walk(runner, walk)
    found = [n for n in circuit_.nodes if n != "input"]
    assert set(found) <= set(walk.receivers)  # every head or MLP in it was explored
    fed = {graph.receivers[r] for _, r in circuit_.edges}
    for node in found:
        inputs = [f"{node}<{kind}>" for kind in "qkv"] if node.startswith("L") else [node]
        assert set(inputs) <= fed, f"{node}: an input with no edge into it"
    assert set(circuit_.pruned().nodes) == set(circuit_.nodes)  # nothing the walk found is pruned away
    for edge in walk.input_edges:  # each closed input's edge from the input is the walk's own measurement
        receiver = edge.receiver if edge.input is None else f"{edge.receiver}<{edge.input}>"
        assert edge.sender == "input" and edge.score == walk.maps[receiver]["input"]
        assert all(abs(v) < walk.threshold for v in walk.maps[receiver].values())


def test_the_walked_circuit_does_the_task_under_resample_ablation(discovered: dict[str, Any],
                                                                demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    _, _, runner = demo
    attribution = runner.eap_ig(steps=5)
    proposal = discovery.propose_circuit(runner, discovered["walk"], attribution, target=0.8)
    assert proposal.added == 0 and proposal.circuit == proposal.walked and proposal.reached
    assert proposal.faithfulness["resample"].faithfulness >= 0.8
    assert set(proposal.faithfulness) == set(ABLATION_KINDS)
    assert "reaches the target" in proposal.describe()


def test_a_walk_that_falls_short_is_completed_by_the_fewest_eap_ig_edges_that_reach_the_target(
        demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    """With a threshold that keeps only the name mover's direct path, the walked circuit falls short; the
    proposal adds EAP-IG's edges by rank, reaches the target, and one edge fewer does not."""
    _, _, runner = demo
    walk = discovery.walk_paths(runner, threshold=0.5, start=1, max_receivers=0)
    assert walk.unexplored and len(walk.edges) == 1  # the budget stopped it at once: the walk says so
    attribution = runner.eap_ig(steps=5)
    proposal = discovery.propose_circuit(runner, walk, attribution, target=0.8)
    assert proposal.walked_faithfulness["resample"].faithfulness < 0.8 and proposal.added > 0 and proposal.reached
    assert proposal.faithfulness["resample"].faithfulness >= 0.8
    extra = [e for e in attribution.ranked() if e not in proposal.walked.edges]
    assert proposal.circuit.edges == proposal.walked.edges | frozenset(extra[:proposal.added])
    fewer = EdgeCircuit(runner.graph, proposal.walked.edges | frozenset(extra[:proposal.added - 1]), "one fewer")
    assert runner.evaluate(fewer, "resample").faithfulness < 0.8
    text = proposal.describe()
    assert "stopped at its budget" in text and f"{proposal.added} EAP-IG edges were added" in text
    assert "the fewest found to reach faithfulness 0.8" in proposal.how


def test_the_diagram_places_nodes_by_layer_and_where_they_act(discovered: dict[str, Any]) -> None:
    graph = discovered["diagram"].graph
    dup, s_inhibition, mover = (f"L{layer}H{head}" for layer, head in (
        PLANTED_IOI.duplicate_token, PLANTED_IOI.s_inhibition, PLANTED_IOI.name_mover))
    assert graph.nodes[mover]["position"] == "end" and graph.nodes[s_inhibition]["position"] == "end"
    assert graph.nodes[dup]["position"] == "S"  # the duplicate-token head acts at the repeated name
    assert graph.nodes[mover]["role"] == "name_mover" and graph.nodes[mover]["layer"] == PLANTED_IOI.name_mover[0]
    assert graph.edges[s_inhibition, mover]["inputs"] == ["q"] and graph.edges[dup, s_inhibition]["inputs"] == ["k"]
    assert all(node == "logits" or any(True for _ in graph.successors(node)) for node in graph.nodes)


def test_the_circuit_file_round_trips_and_circuit_ipynb_reads_it(discovered: dict[str, Any], tmp_path: Path,
                                                              demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    model, prompts, runner = demo
    circuit_ = discovery.circuit_of_walk(runner, discovered["walk"])
    path = discovery.write_circuit_file(tmp_path / "circuit.json", circuit_, roles=discovered["roles"], task="ioi_abc",
                                        how="path-patching walk")
    data = json.loads(path.read_text())
    assert data["how_built"] == "path-patching walk"
    assert data["format"].startswith("circuit-notebooks") and data["roles"]["L2H0"]["role"] == "name_mover"
    assert discovery.read_circuit_file(path, runner).edges == circuit_.edges
    result = discovery.evaluate_circuit_file(model, prompts, path)
    assert set(result.by_ablation) == set(ABLATION_KINDS)
    assert result.by_ablation["resample"][0].faithfulness == pytest.approx(
        runner.evaluate(circuit_, "resample").faithfulness)
    assert result.by_ablation["resample"][0].faithfulness > 0.9  # the planted paths do the task
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"edges": ["L2H0->logits", "L1H2->L2H0<q>"]}))
    assert len(discovery.read_circuit_file(hand, runner)) == 2
    assert "no circuit file evaluated" in discovery.evaluate_circuit_file(model, prompts, None).describe()
    with pytest.raises(FileNotFoundError, match="circuit_file = .*no such file"):
        discovery.read_circuit_file(tmp_path / "missing.json", runner)


def test_direct_effects_are_path_patching_into_the_logits(demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    _, _, runner = demo
    direct = runner.direct_effects()
    patched = runner.path_patching("logits")
    assert_matches(direct, torch.tensor([patched[n] for n in runner.graph.senders]), FLOAT32_PATCHING,
                   what="direct effects against path patching into the logits")


def test_edges_patched_together_get_the_effects_they_get_alone(demo: tuple[Any, PromptSet, GraphRunner]) -> None:
    """Exact path patching runs many edges at once (a copy of the prompts each, up to edge_rows rows): each
    edge's effect is, to the bit, what a run of its own gives it."""
    model, prompts, runner = demo
    alone = GraphRunner(model, prompts, edge_rows=len(prompts))
    assert runner.edge_rows >= 4 * len(prompts)
    for receiver in ("logits", "MLP1", "L1H2<k>", "L2H0<q>", "L2H1<v>"):
        r = runner.graph.receiver_index(receiver)
        together, one_by_one = runner.edge_effects(r), alone.edge_effects(r)
        assert torch.equal(together.isnan(), one_by_one.isnan()) and not bool(together.isnan().all())
        assert torch.equal(together.nan_to_num(), one_by_one.nan_to_num()), receiver


def test_each_senders_sum_through_its_edges_is_the_expression_it_replaces() -> None:
    """Each sender's difference dotted with the sum over the receivers it feeds, computed without copies,
    equals the flip-cumsum-flip expression to the bit (GPT-2 small's graph and width)."""
    torch.manual_seed(0)
    summed, delta = torch.randn(445, 2, 18, 768), torch.randn(157, 2, 18, 768)
    first_fed = torch.sort(torch.randint(0, 445, (157,))).values
    expected = (summed.flip(0).cumsum(0).flip(0)[first_fed] * delta).sum(-1)
    assert torch.equal(edge_attribution.through_each_sender(summed, delta, first_fed.tolist()), expected)


def test_every_role_of_the_vocabulary_is_in_the_schema_and_has_a_colour_and_a_label() -> None:
    def enums(node: Any) -> list[list[str]]:
        if isinstance(node, dict):
            found = [node["enum"]] if "unknown" in node.get("enum", []) else []
            return found + [e for value in node.values() for e in enums(value)]
        return [e for value in node for e in enums(value)] if isinstance(node, list) else []

    [roles_enum] = enums(results_format.schema())
    assert tuple(roles_enum) == head_roles.ROLE_VOCABULARY
    assert set(head_roles.ROLE_VOCABULARY) <= set(discovery_figures.ROLE_COLOURS) and set(head_roles.ROLE_VOCABULARY) == set(head_roles.ROLE_LABELS)
