"""Tensors stay where the model is: the analyses bring only final results to the host, through
``helpers.models.devices.to_host``, never a weight, and never once per iteration of a loop.

No GPU is here, so these run on the CPU, where ``.cpu()`` is a no-op that is still called: every call is
recorded with the line that made it while each analysis runs on the toy model."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.analyses import ablations, copy_scores, head_ablation, head_functions, neurons, vectors
from helpers.analyses import dla as attribution
from helpers.analyses.circuits import head_circuits
from helpers.analyses.circuits.graph_runner import GraphRunner
from helpers.analyses.heads import HeadScore
from helpers.analyses.patching import PATCH_KINDS, PatchingEngine
from helpers.models import devices
from helpers.models.load import load_model
from helpers.models.toys import build_toy_model
from helpers.paths import REPO_ROOT
from helpers.tasks.prompts import PromptSet, load_task

HELPERS = REPO_ROOT / "helpers"
# Where .cpu() may be written: the one function results leave the device through, and the figures and the
# command line, which read results already on the host.
ALLOWED_FILE = HELPERS / "models" / "devices.py"
ALLOWED = {ALLOWED_FILE}
ON_THE_HOST = (HELPERS / "figures", HELPERS / "run", HELPERS / "notebook")
PROJECT = (HELPERS, REPO_ROOT / "tests")  # whose lines a transfer is charged to (not a wrapper's, a library's)


def test_no_analysis_calls_cpu_itself() -> None:
    found = []
    for path in sorted(HELPERS.rglob("*.py")):
        if path in ALLOWED or any(path.is_relative_to(p) for p in ON_THE_HOST):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\.cpu\(\)|\.to\(\s*[\"']cpu[\"']", line.split("#")[0]):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not found, "results leave the device through helpers.models.devices.to_host only:\n" + "\n".join(found)


class HostCalls:
    """Every ``Tensor.cpu()`` made while recording: the project's line that asked for it (the caller of
    ``to_host``, or the line itself when it is not ``to_host``), and the tensor."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, Any]] = []  # (where, through to_host, the tensor)

    def record(self, tensor: torch.Tensor) -> None:
        frame = sys._getframe(2)  # the frame that called .cpu()
        through = frame.f_code.co_name == "to_host" and Path(frame.f_code.co_filename) == ALLOWED_FILE
        if through:
            frame = frame.f_back
        while frame is not None and not any(Path(frame.f_code.co_filename).is_relative_to(p) for p in PROJECT):
            frame = frame.f_back  # a library's call on our behalf: charge it to our line that made it
        if frame is not None:
            where = f"{Path(frame.f_code.co_filename).relative_to(REPO_ROOT)}:{frame.f_lineno}"
            self.calls.append((where, through, tensor))


@contextmanager
def recording_host_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostCalls]:
    calls = HostCalls()
    original = torch.Tensor.cpu

    def cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.record(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    yield calls
    monkeypatch.setattr(torch.Tensor, "cpu", original)


def weight_matrices(model: Any) -> list[tuple[str, torch.Tensor]]:
    """The model's weight matrices as the analyses see them, whole and per layer and head."""
    found = []
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U", "W_E"):
        weight = getattr(model, name).detach().float()
        found.append((name, weight))
        if weight.ndim >= 3:
            found += [(f"{name}[{layer}]", weight[layer]) for layer in range(weight.shape[0])]
        if weight.ndim == 4:
            found += [(f"{name}[{layer}, {head}]", weight[layer, head]) for layer in range(weight.shape[0])
                      for head in range(weight.shape[1])]
    return found


def moved_weights(calls: HostCalls, model: Any) -> list[str]:
    weights = weight_matrices(model)
    return [f"{where}: {name}" for where, _, tensor in calls.calls for name, weight in weights
            if tensor.shape == weight.shape and torch.equal(tensor.detach().float(), weight)]


def analyses(model: Any, prompts: PromptSet) -> dict[str, Callable[[], Any]]:
    """Each analysis the templates call, as one call on ``model``."""
    cache = attribution.run_final_position_cache(model, prompts)
    heads = [HeadScore(1, 0, 0.5), HeadScore(0, 3, -0.2)]
    engine = PatchingEngine(model, prompts, progress=False)
    runner = GraphRunner(model, prompts)
    reference = ablations.reference_prompts("corrupted", prompts)
    return {
        "DLA cache": lambda: attribution.run_final_position_cache(model, prompts),
        "head DLA": lambda: attribution.compute_head_attribution(model, cache),
        "head sum check": lambda: attribution.head_output_sum_error(model, cache),
        "logit difference": lambda: attribution.compute_logit_diff(cache, prompts),
        "attention patterns": lambda: attribution.compute_attention_patterns(model, prompts, heads),
        "head ablation": lambda: head_ablation.compute_head_ablation(model, prompts, cache, 1, 0),
        "copy scores": lambda: copy_scores.compute_copy_scores(model, prompts),
        "successor scores": lambda: copy_scores.compute_successor_scores(model, load_task("months")),
        "attention vs projection": lambda: copy_scores.compute_attention_vs_projection(model, prompts, heads),
        "copy predictions": lambda: copy_scores.compute_copy_predictions(model, prompts, heads),
        "head role scores": lambda: head_functions.compute_head_role_scores(model, seq_len=8, batch=2),
        **{f"patching {kind}": (lambda kind=kind: engine.patch(kind)) for kind in PATCH_KINDS},
        "attribution patching": engine.attribution_patching,
        "neuron patching": lambda: engine.patch_neurons(1),
        "neuron attribution": engine.neuron_attribution,
        "neuron activations": lambda: neurons.compute_neuron_activations(model, prompts, 1, [0, 5]),
        "mean ablation": lambda: head_circuits.compute_mean_ablation(model, prompts, reference),
        "vector arithmetic": lambda: vectors.compute_vector_arithmetic(
            model, vectors.target_prompts("corrupted", prompts, model),
            vectors.extract_update_vector(cache, component="mlp", layer=0), layers=[0], n_random=1),
        "EAP": runner.eap,
        "EAP-IG": lambda: runner.eap_ig(steps=2),
        "edge ranking": lambda: runner.eap().ranked(),
        "path patching": lambda: runner.path_patching("logits"),
        "circuit run": lambda: runner.evaluate(runner.eap().circuit(10), "mean"),
    }


@pytest.fixture(scope="module")
def deeper(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Any:
    """The toy model's twin with twice its layers."""
    directory = build_toy_model(tmp_path_factory.mktemp("deeper-toy"), tokenizer=gpt2_tokenizer, weight_std=0.3,
                                n_layers=4)
    return load_model(str(directory), device="cpu")


def host_calls(model: Any, prompts: PromptSet, monkeypatch: pytest.MonkeyPatch) -> dict[str, HostCalls]:
    found = {}
    for name, run in analyses(model, prompts).items():
        with recording_host_calls(monkeypatch) as calls:
            run()
        found[name] = calls
    return found


def test_results_leave_the_device_once_and_never_as_a_weight(
        toy_model: Any, deeper: Any, ioi_prompts: PromptSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """For each analysis: every ``.cpu()`` goes through ``to_host``; none moves a weight matrix (whole, a
    layer's or a head's); and a model of twice the layers brings results to the host as many times (a
    transfer per layer, or per chunk of a layer's work, is a device-to-host round trip in a loop)."""
    shallow, deep = host_calls(toy_model, ioi_prompts, monkeypatch), host_calls(deeper, ioi_prompts, monkeypatch)
    problems = []
    for name, calls in shallow.items():
        problems += [f"{name}: {where} calls .cpu() itself" for where, through, _ in calls.calls if not through]
        problems += [f"{name}: moves {moved} to the host" for moved in moved_weights(calls, toy_model)]
        if len(deep[name].calls) != len(calls.calls):
            problems.append(f"{name}: {len(calls.calls)} transfers to the host on {toy_model.cfg.n_layers} layers, "
                            f"{len(deep[name].calls)} on {deeper.cfg.n_layers}: "
                            + ", ".join(sorted({w for w, _, _ in deep[name].calls})))
    assert sum(len(calls.calls) for calls in shallow.values()) > len(shallow)  # the recorder saw the transfers
    assert not problems, "\n".join(problems)


def test_the_recorder_sees_a_weight_moved_and_a_transfer_per_layer(toy_model: Any, deeper: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a weight brought to the host, and a transfer per layer, are both caught."""
    def per_layer(model: Any) -> None:
        for layer in range(model.cfg.n_layers):
            devices.to_host(model.W_U[:, :3] * layer)

    with recording_host_calls(monkeypatch) as calls:
        devices.to_host(toy_model.W_O.float()[1, 2])
    assert [moved.split(": ")[1] for moved in moved_weights(calls, toy_model)] == ["W_O[1, 2]"]
    counts = []
    for model in (toy_model, deeper):
        with recording_host_calls(monkeypatch) as calls:
            per_layer(model)
        counts.append(len(calls.calls))
    assert counts == [2, 4]
