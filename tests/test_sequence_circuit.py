"""Circuit discovery and head roles beyond IOI, on a model whose circuit is known: the planted sequence model
(:func:`helpers.models.toys.build_planted_sequence_model`) continues a list of months after a comma by a
two-step path, embeddings -> previous-token head (attends by position) -> successor head -> logits, beside an
anti-copying head that acts where the answer is not predicted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers.analyses.circuits import discovery, head_roles
from helpers.analyses.circuits.graph import EdgeCircuit
from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.analyses.copy_scores import compute_copy_scores, compute_successor_scores, successor_pairs
from helpers.models.load import load_model
from helpers.models.toys import MONTHS, PLANTED_SEQUENCE, build_planted_sequence_model, planted_sequence_task
from helpers.paths import run_folder_name
from helpers.tasks.prompts import build_prompts
from helpers.tasks.spec import load_task

SUCCESSOR, PREVIOUS, ANTI_COPY = (f"L{layer}H{head}" for layer, head in (
    PLANTED_SEQUENCE.successor, PLANTED_SEQUENCE.previous_token, PLANTED_SEQUENCE.anti_copy))


@pytest.fixture(scope="module")
def sequence_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Path:
    return build_planted_sequence_model(tmp_path_factory.mktemp("sequence-model"), tokenizer=gpt2_tokenizer)


@pytest.fixture(scope="module")
def sequence(sequence_dir: Path) -> tuple[Any, Any, Any, GraphRunner]:
    model = load_model(str(sequence_dir), device="cpu")
    spec = load_task(planted_sequence_task())
    prompts = build_prompts(spec, model.tokenizer)
    return model, spec, prompts, GraphRunner(model, prompts)


@pytest.fixture(scope="module")
def walked(sequence: tuple[Any, Any, Any, GraphRunner]) -> dict[str, Any]:
    _, _, _, runner = sequence
    walk = discovery.walk_paths(runner)
    proposal = discovery.propose_circuit(runner, walk, runner.eap_ig(steps=5))
    return {"walk": walk, "proposal": proposal}


def test_the_planted_model_does_the_task(sequence: tuple[Any, Any, Any, GraphRunner]) -> None:
    model, _, prompts, _ = sequence
    logits = model(prompts.clean_tokens)[torch.arange(len(prompts)), prompts.final_pos]
    assert (logits.argmax(dim=-1) == prompts.answer_tokens[:, 0]).all()  # the next month, after every prompt


def test_the_walk_follows_the_two_step_path_down_to_the_embeddings(walked: dict[str, Any]) -> None:
    walk = walked["walk"]
    assert {(e.sender, e.receiver, e.input) for e in walk.edges} == {
        (SUCCESSOR, "logits", None), (PREVIOUS, SUCCESSOR, "v"), ("input", PREVIOUS, "v")}
    assert all(e.score == pytest.approx(1.0, abs=0.05) for e in walk.edges)  # each step carries the whole task
    # the queries and keys read positions only, the same in both runs: closed by the threshold, kept as input edges
    assert {(e.receiver, e.input) for e in walk.input_edges} == {(n, kind) for n in (SUCCESSOR, PREVIOUS) for kind in "qk"}
    assert walk.complete


def test_the_written_circuit_does_the_task_and_needs_its_edges_from_the_input(
        sequence: tuple[Any, Any, Any, GraphRunner], walked: dict[str, Any]) -> None:
    """The proposed circuit keeps >= 0.8 under resample ablation on its own (nothing added). Without its
    edges from the input the successor head sees the corrupted prompt's last month (resample: nothing of the
    task is left); without the input edges of the closed queries and keys, zero ablation takes the heads'
    positions away and the circuit no longer attends where it should."""
    _, _, _, runner = sequence
    proposal = walked["proposal"]
    assert proposal.added == 0 and proposal.circuit == proposal.walked
    assert proposal.faithfulness["resample"].faithfulness >= 0.8 and proposal.faithfulness["mean"].faithfulness >= 0.8
    assert proposal.faithfulness["zero"].faithfulness >= 0.8
    source = runner.graph.sender_index("input")
    no_input = EdgeCircuit(runner.graph, frozenset(e for e in proposal.circuit.edges if e[0] != source), "no input", "test")
    assert len(no_input) == len(proposal.circuit) - 5
    assert runner.evaluate(no_input, "resample").faithfulness == pytest.approx(0.0, abs=0.05)
    closed = discovery.circuit_of_walk(runner, walked["walk"]).edges - discovery.circuit_of_walk(
        runner, discovery.PathWalk(walked["walk"].edges, (), {}, 0.1)).edges
    assert len(closed) == 4
    without_closed = EdgeCircuit(runner.graph, proposal.circuit.edges - closed, "no closed inputs", "test")
    assert runner.evaluate(without_closed, "resample").faithfulness >= 0.8  # positions: the same in both runs
    assert runner.evaluate(without_closed, "zero").faithfulness < 0.5


def test_successor_scores_find_the_successor_head_on_the_task_s_own_list(sequence: tuple[Any, Any, Any, GraphRunner]) -> None:
    model, spec, _, _ = sequence
    scores = compute_successor_scores(model, spec)
    assert scores is not None and len(scores.pairs) == 12  # the list wraps: December -> January is a pair
    assert scores.pairs.words[-1] == ("December", "January") and not scores.pairs.not_single_tokens
    values = scores.values
    layer, head = PLANTED_SEQUENCE.successor
    assert values[layer, head] == 1.0
    others = values.clone()
    others[layer, head] = 0.0
    assert others.max() < 0.5  # no other head maps months to the next one
    assert scores.top(1)[0].name == SUCCESSOR


def test_successor_pairs_follow_the_list_and_leave_out_words_of_several_tokens(gpt2_tokenizer: Any) -> None:
    """A list that does not wrap has one pair fewer than words; a word that is not one token leaves out
    both pairs it is in, and is named; a task without an ordered list has no pairs."""
    data = planted_sequence_task()
    data.update(cyclic=[], words={"M": [*MONTHS[:5], "Smarch", *MONTHS[5:]]})  # " Smarch" is several GPT-2 tokens
    pairs = successor_pairs(load_task(data), gpt2_tokenizer)
    assert pairs is not None and pairs.not_single_tokens == ("M: 'Smarch'",)
    assert len(pairs) == 10 and ("May", "June") not in pairs.words and pairs.words[0] == ("January", "February")
    assert gpt2_tokenizer.decode([int(pairs.token[0])]) == " January"  # the word as the model predicts it
    assert successor_pairs(load_task("ioi"), gpt2_tokenizer) is None


def test_roles_on_the_sequence_task_name_the_planted_heads(sequence: tuple[Any, Any, Any, GraphRunner]) -> None:
    model, spec, prompts, runner = sequence
    assert not spec.answer_in_prompt and spec.sequence_lists == ("M",)
    evidence = head_roles.measure_evidence(model, prompts, runner, spec=spec)
    roles = head_roles.assign_roles(evidence, names=spec.answer_in_prompt)
    assert {h: r.role for h, r in roles.items() if r.role != "unknown"} == {
        PREVIOUS: "previous_token", SUCCESSOR: "successor", ANTI_COPY: "copy_suppression"}
    assert roles[SUCCESSOR].evidence[:2] == ("direct effect +1.00 (>= 0.1)", "successor score 1.00 (>= 0.5)")
    # the anti-copying head acts only where the answer is not predicted: no effect on the task
    assert abs(evidence[ANTI_COPY].direct_effect) < 0.01 and evidence[ANTI_COPY].negative_copy == 1.0
    assert compute_copy_scores(model, prompts).negative[PLANTED_SEQUENCE.anti_copy] == 1.0
    # nothing attends to the answer's word: the next month is in no prompt
    assert all(e.attention_to_answer is None for e in evidence.values())
    # the same evidence read as a task of names: the writer copies nothing, so it is no name mover
    assert head_roles.assign_roles(evidence)[SUCCESSOR].role == "successor"


def test_the_notebooks_name_the_successor_head_on_the_sequence_task(sequence_dir: Path, tmp_path: Path) -> None:
    """``make run`` on the sequence task: the copy-scores notebook stores the successor scores and circuit
    discovery, reading them, names the heads as on the evidence above."""
    from helpers.run import execute as running

    task_file = tmp_path / "planted_months.yaml"
    task_file.write_text(yaml.safe_dump(planted_sequence_task(n_prompts=12)), encoding="utf-8")
    lines: list[str] = []
    code = running.run_tasks([str(task_file)], model=str(sequence_dir), device="cpu", notebooks_dir=tmp_path / "nb",
                             log=lines.append, templates=["head_functions", "copy_scores", "circuit_discovery"])
    assert code == 0, "\n".join(lines)
    folder = tmp_path / "nb" / run_folder_name("planted_months", str(sequence_dir), "gpt2")  # the run on this model
    results = json.loads((folder / "results.json").read_text())["templates"]
    successors = results["copy_scores"]["successor_scores"]
    assert successors["lists"] == {"M": 12} and successors["top"][0]["head"] == SUCCESSOR
    roles = {h: r["role"] for h, r in results["circuit_discovery"]["roles"].items() if r["role"] != "unknown"}
    assert roles == {PREVIOUS: "previous_token", SUCCESSOR: "successor", ANTI_COPY: "copy_suppression"}
    assert results["circuit_discovery"]["proposed_circuit"]["faithfulness"]["resample"]["faithfulness"] >= 0.8
