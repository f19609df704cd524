"""Every architecture family the suite knows, on a small model of its own with random weights: the
patching engine's fast path against transformer_lens.patching and against patching through the model's
own hooks, direct logit attribution and head outputs against plain transformers, mean ablation against
explicit hooks in plain transformers.

Each toy model (``helpers.models.toys.toy_config``) has the features of its family that change the
arithmetic: grouped-query attention (Llama, Mistral, Qwen2, Gemma 2; multi-query Gemma), local windows
smaller than the prompts (GPT-Neo, Mistral, Qwen2, Gemma 2), partial rotary (GPT-NeoX, GPT-J), parallel
blocks (GPT-NeoX, GPT-J), Gemma 2's post-norms and soft caps, random normalisation weights everywhere.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from checks import (
    FLOAT32_FOLDED,
    FLOAT32_GRADIENT,
    FLOAT32_PATCHING,
    FLOAT32_REORDERED,
    SEEDS,
    Tolerance,
    assert_matches,
    assert_scalar_matches,
    fast_engine,
    run_dir,
)
from reference import hf_head_dla, hf_mean_ablated_metric, transformer_lens_patch
from test_golden import assert_as_stored

from helpers.analyses import ablations
from helpers.analyses import dla as attribution
from helpers.analyses.circuits import head_circuits as circuit
from helpers.analyses.patching import PATCH_KINDS, PatchingEngine
from helpers.models import hooks
from helpers.models.architectures import FAMILIES, describe, family_of
from helpers.models.load import load_model, prepends_bos
from helpers.models.toys import TOY_ARCHITECTURES, build_toy_model
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet, build_prompts, load_task

# The bridge hands these architectures' attention to the Hugging Face module, whose pattern is only a
# copy once computed: a hook's edit of hook_pattern is discarded (transformer_lens.patching's pattern
# patching changes nothing there, silently). Our hook path patches z instead.
DELEGATED_ATTENTION = {"gpt_neo", "gptj", "opt"}


@dataclass(frozen=True)
class Toy:
    architecture: str
    directory: Path
    model: Any
    prompts: PromptSet
    engine: PatchingEngine
    hooks: PatchingEngine  # the same patches through the model's hooks


def hook_engine(model: Any, prompts: PromptSet, monkeypatch: pytest.MonkeyPatch) -> PatchingEngine:
    """An engine made to patch through the model's hooks (the path it takes where its own forward pass
    is not trusted)."""
    with monkeypatch.context() as patch:
        patch.setattr(PatchingEngine, "_start_fast_path", lambda self, final: "the test asks for the hook path")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PatchingEngine(model, prompts, progress=False)


@pytest.fixture(scope="module", params=TOY_ARCHITECTURES)
def toy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Toy:
    architecture = request.param
    directory = build_toy_model(tmp_path_factory.mktemp(architecture), architecture=architecture,
                                tokenizer=gpt2_tokenizer, weight_std=0.3, seed=SEEDS[architecture])
    model = load_model(str(directory), device="cpu")
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=8), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    with pytest.MonkeyPatch.context() as monkeypatch:
        hooks = hook_engine(model, prompts, monkeypatch)
    return Toy(architecture, directory, model, prompts, fast_engine(model, prompts), hooks)


@pytest.fixture(scope="module")
def hf(toy: Toy) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(toy.directory, attn_implementation="eager").eval()


def test_the_suite_knows_the_family_and_decides_bos_as_the_bridge_does(toy: Toy) -> None:
    arch = describe(toy.model)
    assert arch.family is not None and arch.family is family_of(toy.architecture)
    # the runner's pre-flight decides BOS from the config alone; it must agree with the loaded model
    assert prepends_bos(str(toy.directory)) == bool(toy.model.cfg.default_prepend_bos)
    assert abs(toy.engine.task_metric.clean - toy.engine.task_metric.corrupted) > 0.25


def test_the_loaded_model_predicts_what_plain_transformers_predicts(toy: Toy, hf: Any) -> None:
    with torch.no_grad():
        expected = hf(toy.prompts.clean_tokens).logits.log_softmax(-1)
        actual = toy.model(toy.prompts.clean_tokens).log_softmax(-1)
    assert_matches(actual, expected, FLOAT32_FOLDED, what=f"{toy.architecture} log-probabilities")


def test_logits_read_at_the_final_positions_alone_are_the_models_own(toy: Toy) -> None:
    """The analyses have the unembedding read each prompt's final position alone (helpers.models.hooks): the
    logits are those of the whole run at those positions, to the bit, with and without an edit by a hook,
    and the activations cached beside them are unchanged."""
    tokens, final_pos = toy.prompts.clean_tokens, toy.prompts.final_pos
    name = f"blocks.{toy.model.cfg.n_layers - 1}.hook_resid_pre"

    def double(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid * 2

    for edits in ([], [(name, double)]):
        with torch.no_grad(), toy.model.hooks(fwd_hooks=edits):
            whole, cache = toy.model.run_with_cache(tokens, names_filter=[name])
        assert torch.equal(hooks.final_logits(toy.model, tokens, final_pos, edits), at_final_pos(whole, final_pos))
        logits, acts = hooks.cache_activations(toy.model, tokens, [name], fwd_hooks=edits, final_pos=final_pos)
        assert torch.equal(logits, at_final_pos(whole, final_pos)) and torch.equal(acts[name], cache[name])
        unread, acts = hooks.cache_activations(toy.model, tokens, [name], fwd_hooks=edits)
        assert unread is None and torch.equal(acts[name], cache[name])


@pytest.mark.parametrize("kind", PATCH_KINDS)
def test_each_patching_variant_equals_the_same_patch_through_the_models_hooks(kind: str, toy: Toy) -> None:
    assert_matches(toy.engine.patch(kind).values, toy.hooks.patch(kind).values, FLOAT32_PATCHING,  # type: ignore[arg-type]
                   what=f"{toy.architecture} {kind}: fast path against hooks")


@pytest.mark.parametrize("kind", PATCH_KINDS)
def test_each_patching_variant_equals_transformer_lens(kind: str, toy: Toy) -> None:
    """Where transformer_lens.patching patches what our variant patches: values of a query head are not
    its key/value group's (grouped-query attention, checked below), and delegated attention ignores
    pattern edits."""
    arch = describe(toy.model)
    if kind == "head_v" and arch.grouped_query:
        pytest.skip("transformer_lens patches a key/value group's values: see the group test below")
    if kind == "head_pattern" and toy.architecture in DELEGATED_ATTENTION:
        # transformer_lens's pattern patch changes nothing here: every value is the corrupted run's (0)
        unpatched = transformer_lens_patch(toy.model, toy.prompts, kind, toy.engine.metric)
        assert float(unpatched.abs().max()) < 1e-5 < float(toy.engine.patch(kind).values.abs().max())  # type: ignore[arg-type]
        pytest.skip("the bridge discards pattern edits on this architecture (compared with the hook path above)")
    reference = transformer_lens_patch(toy.model, toy.prompts, kind, toy.engine.metric)
    assert_matches(toy.engine.patch(kind).values, reference, FLOAT32_PATCHING, what=f"{toy.architecture} {kind}")  # type: ignore[arg-type]


def test_value_patching_of_a_whole_key_value_group_equals_transformer_lens(toy: Toy) -> None:
    """With grouped-query attention transformer_lens patches a key/value head's values, which every query
    head of its group reads. The same patch made on z (each of the group's query heads recombining its
    corrupted pattern with the clean values, as the engine and the hook path do per query head) gives the
    same numbers: the recombination is exact."""
    arch = describe(toy.model)
    if not arch.grouped_query:
        pytest.skip("every key/value head serves one query head here (compared above)")
    model, prompts, metric = toy.model, toy.prompts, toy.engine.metric
    names = [f"blocks.{layer}.attn.hook_{kind}" for layer in range(arch.n_layers) for kind in ("v", "pattern")]
    _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=names)
    _, corrupted = model.run_with_cache(prompts.corrupted_tokens, names_filter=names)
    values = torch.zeros(arch.n_layers, arch.n_kv_heads)
    for layer in range(arch.n_layers):
        v = clean[f"blocks.{layer}.attn.hook_v"].repeat_interleave(arch.group_size, dim=2)
        z = torch.einsum("bhqk,bkhd->bqhd", corrupted[f"blocks.{layer}.attn.hook_pattern"], v)
        for group in range(arch.n_kv_heads):
            heads = [h for h in range(arch.n_heads) if arch.kv_head(h) == group]

            def patch(act: torch.Tensor, hook: Any, heads: list[int] = heads, z: torch.Tensor = z) -> torch.Tensor:
                act = act.clone()
                act[:, :, heads] = z[:, :, heads]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(prompts.corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
            values[layer, group] = metric(at_final_pos(logits, prompts.final_pos))
    reference = transformer_lens_patch(model, prompts, "head_v", metric)
    assert_matches(values, reference, FLOAT32_PATCHING, what=f"{toy.architecture} key/value-group value patching")


def test_attribution_and_neuron_patching_equal_the_hook_path(toy: Toy) -> None:
    ours, theirs = toy.engine.attribution_patching(), toy.hooks.attribution_patching()
    for kind in ours:
        assert_matches(ours[kind].values, theirs[kind].values, FLOAT32_GRADIENT,
                       what=f"{toy.architecture} {kind} attribution patching")
    layer = toy.model.cfg.n_layers - 1
    every = toy.engine.patch_neurons(layer)
    strongest = (every - toy.engine.corrupted_metric).abs().argsort(descending=True)[:12].tolist()
    neurons = strongest + [n for n in range(0, len(every), 23) if n not in strongest]  # and a spread of others
    assert_matches(toy.engine.patch_neurons(layer, neurons), every[neurons], FLOAT32_REORDERED,
                   what=f"{toy.architecture} some neurons, batched apart")
    assert_matches(every[neurons], toy.hooks.patch_neurons(layer, neurons), FLOAT32_PATCHING,
                   what=f"{toy.architecture} neuron patching")
    assert_matches(toy.engine.neuron_attribution(), toy.hooks.neuron_attribution(), FLOAT32_GRADIENT,
                   what=f"{toy.architecture} neuron attribution")


def test_direct_logit_attribution_adds_up_and_matches_plain_transformers(toy: Toy, hf: Any) -> None:
    cache = attribution.run_final_position_cache(toy.model, toy.prompts)
    components = attribution.compute_component_attribution(cache)
    lens = attribution.compute_logit_lens(cache)
    check = attribution.check_additivity(toy.model, cache, components, lens)
    assert check.ok, check.to_dict()
    arch = describe(toy.model)
    assert ("pos_embed" in components.labels) == arch.learned_positions
    assert len(lens.labels) == 1 + arch.n_layers * (1 if arch.parallel else 2)
    heads, logit_diff = hf_head_dla(hf, toy.prompts)
    assert_matches(cache.logit_diff, logit_diff, FLOAT32_FOLDED, what=f"{toy.architecture} logit difference")
    assert_matches(components.per_prompt.sum(0), logit_diff, FLOAT32_FOLDED, what=f"{toy.architecture} attributions")
    # each head's share is a part of the logit difference, rounded on that difference's scale
    assert_matches(attribution.compute_head_attribution(toy.model, cache).per_prompt, heads, FLOAT32_FOLDED,
                   what=f"{toy.architecture} per-head attribution", scale=float(logit_diff.abs().max()))


def test_mean_ablation_equals_explicit_hooks_in_plain_transformers(toy: Toy, hf: Any) -> None:
    prompts, model = toy.prompts, toy.model
    reference = ablations.reference_prompts("corrupted", prompts)
    evaluator = circuit.CircuitEvaluator(model, prompts, circuit.compute_mean_ablation(model, prompts, reference))
    kept = circuit.parse_circuit(["L0H1", {"head": "L1H2", "positions": ["final"]}], name="c",
                                 n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads)
    keep = circuit.keep_mask(kept, prompts, model.cfg.n_layers, model.cfg.n_heads)
    expected = hf_mean_ablated_metric(hf, prompts, reference.tokens, reference.final_pos, reference.template_index, keep,
                                      lambda logits: prompts.metric(logits).mean())
    assert_scalar_matches(evaluator.evaluate(kept).metric, expected, FLOAT32_FOLDED, baseline=evaluator.full_metric,
                          what=f"{toy.architecture} mean ablation")


@pytest.mark.parametrize("architecture, dtype, weight_std, seed", [
    ("gpt2", "float16", 0.3, 4), ("llama", "float16", 0.15, 1), ("llama", "bfloat16", 0.15, 1)])
def test_half_precision_keeps_the_fast_path_within_its_rounding(
    architecture: str, dtype: str, weight_std: float, seed: int, tmp_path_factory: pytest.TempPathFactory,
    gpt2_tokenizer: Any,
) -> None:
    """In float16 and bfloat16 the engine and the model each round to the dtype at every operation: a
    logit of size L carries rounding of order eps * L, which the normalised metric divides by the clean-
    corrupted gap. Measured: at most 0.8 of that unit; the tolerance is 2. The models are chosen for a
    large gap next to their logits (gap / L of 0.09-0.13); even so half precision leaves the patching
    values only a few tolerances wide (float16 over 10, bfloat16's 8-bit mantissa about 5), so the
    comparison asks for that spread rather than 100 (shifted, shuffled and constant results still fail)."""
    directory = build_toy_model(tmp_path_factory.mktemp(f"{architecture}-{dtype}"), architecture=architecture,
                                tokenizer=gpt2_tokenizer, weight_std=weight_std, seed=seed)
    model = load_model(str(directory), device="cpu", dtype=dtype)
    prompts = build_prompts(load_task("ioi").with_overrides(n_prompts=8), model.tokenizer,
                            prepend_bos=bool(model.cfg.default_prepend_bos))
    engine = fast_engine(model, prompts)
    with torch.no_grad():
        logit_scale = float(model(prompts.clean_tokens).float().abs().max())
    unit = torch.finfo(getattr(torch, dtype)).eps * logit_scale / abs(engine.task_metric.clean - engine.task_metric.corrupted)
    tolerance = Tolerance(2.0, f"{dtype} rounding of the logits over the clean-corrupted gap")
    for kind in ("resid_pre", "head_pattern"):
        reference = transformer_lens_patch(model, prompts, kind, engine.metric)
        assert_matches(engine.patch(kind).values, reference, tolerance, scale=unit,  # type: ignore[arg-type]
                       min_spread=10 if dtype == "float16" else 4,
                       what=f"{architecture} {dtype} {kind}")


def test_each_heads_ov_circuit_reads_the_values_the_model_computes(toy: Toy) -> None:
    """Copy scores put the stream after layer 0 through each layer-1 head's OV circuit. That stream is what
    layer 1 reads, so the model's own values there (``hook_v``, of the key/value head the query head
    reads) times its ``W_O`` are the same vectors."""
    from helpers.analyses import copy_scores
    from helpers.analyses.heads import HeadScore
    from helpers.models.load import post_norm_weights

    model, prompts = toy.model, toy.prompts
    arch = describe(model)
    inputs = copy_scores.copy_inputs(prompts)
    heads = [HeadScore(1, head, 0.0) for head in range(arch.n_heads)]
    ours = copy_scores.ov_outputs(model, copy_scores.resid_after_first_layer(model, prompts, inputs), heads)
    _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=["blocks.1.attn.hook_v"])
    values = cache["blocks.1.attn.hook_v"][inputs.prompt_index, inputs.position]  # [case, kv_head, d_head]
    w_o = model.W_O[1]
    if arch.post_norms:
        w_o = w_o * post_norm_weights(model)[1]
    expected = torch.stack([values[:, arch.kv_head(head)] @ w_o[head] for head in range(arch.n_heads)])
    assert_matches(ours, expected, FLOAT32_FOLDED, what=f"{toy.architecture} OV outputs")


def test_the_forward_pass_reads_the_models_own_weights_where_they_are_laid_out_as_it_uses_them(toy: Toy) -> None:
    """W_in, W_out and W_O: each layer's is one of the model's own parameters where the bridge holds it as
    the forward pass uses it (GPT-2's Conv1D layout: no copy, 0.25 GB at GPT-2 small's size), else a
    stacked copy; either way the model's values, to the bit."""
    from helpers.models.forward import shared_weights

    model = toy.model
    weights = shared_weights(model, describe(model))
    own = {param.data_ptr() for param in model.parameters()}
    for name in ("W_in", "W_out", "W_O"):
        held, expected = getattr(weights, name), getattr(model, name).detach()
        if toy.architecture == "gpt2":
            assert isinstance(held, tuple), f"{name}: a stacked copy, not the model's own parameters"
        if isinstance(held, tuple):
            assert all(layer.data_ptr() in own for layer in held), name
        assert all(torch.equal(held[layer], expected[layer]) for layer in range(expected.shape[0])), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/self/maps")
def test_no_weight_is_left_reading_the_checkpoint_file(toy: Toy) -> None:
    """While one tensor reads the memory-mapped checkpoint, every page of the file it has read stays
    resident (GPT-2 small: 474 MiB for its 81 MiB qkv projection): the loader copies them out."""
    from helpers.models.load import file_mapped_ranges

    files = [(start, end) for start, end, path in file_mapped_ranges()
             if Path(path).resolve().is_relative_to(toy.directory.resolve())]
    reading = [name for name, tensor in (*toy.model.named_parameters(), *toy.model.named_buffers())
               if any(start <= tensor.untyped_storage().data_ptr() < end for start, end in files)]
    assert not reading, f"{len(reading)} tensors still read the checkpoint file, e.g. {reading[:3]}"


def test_every_family_has_a_toy_model() -> None:
    assert {model_type for family in FAMILIES for model_type in family.model_types} == set(TOY_ARCHITECTURES)


def test_the_reading_of_each_difference_is_said(toy: Toy) -> None:
    arch = describe(toy.model)
    notes = " ".join(text for _, text in arch.notes())
    assert ("rotary" in notes) == (not arch.learned_positions)
    assert ("in parallel" in notes) == arch.parallel
    assert ("grouped-query" in notes) == arch.grouped_query
    assert ("gated" in notes) == arch.gated_mlp
    assert ("local attention" in notes) == any(w is not None for w in arch.windows)
    assert ("soft-capped" in notes) == bool(arch.final_softcap)
    assert arch.notes_for("mlp_neurons") == [text for topics, text in arch.notes()
                                             if "all" in topics or "mlp_neurons" in topics]


def test_an_architecture_the_bridge_cannot_load_is_named_with_what_is_supported(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    import transformers

    from helpers.models.load import ModelLoadError

    config = transformers.CTRLConfig(vocab_size=len(gpt2_tokenizer), n_embd=32, n_layer=1, n_head=2, dff=64,
                                     n_positions=64)
    transformers.CTRLLMHeadModel(config).save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path), device="cpu")
    message = str(err.value)
    assert "CTRLLMHeadModel" in message and "model_type 'ctrl'" in message and "cannot load" in message
    assert "GPT-NeoX (Pythia) (gpt_neox)" in message and "Fix:" in message


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
def test_the_whole_suite_runs_through_the_runner(architecture: str, tmp_path_factory: pytest.TempPathFactory,
                                                 gpt2_tokenizer: Any) -> None:
    """``make run`` on a Pythia-like (rotary on a quarter of each head, parallel blocks) and a Llama-like
    (grouped-query attention, RMSNorm, gated MLP) toy model: every template executes without an error on
    the engine's fast path, the figures add up, and each notebook says how the architecture changes it."""
    import json

    import nbformat

    from helpers.run import execute as running
    from helpers.run import plan as planning

    directory = build_toy_model(tmp_path_factory.mktemp(f"run-{architecture}"), architecture=architecture,
                                tokenizer=gpt2_tokenizer, weight_std=0.3, seed=SEEDS[architecture])
    notebooks = tmp_path_factory.mktemp(f"notebooks-{architecture}")
    lines: list[str] = []
    assert running.run_tasks(["ioi"], model=str(directory), n_prompts=8, device="cpu", notebooks_dir=notebooks,
                         log=lines.append) == 0, "\n".join(lines)
    out = run_dir(notebooks, "ioi", directory)
    for template in planning.TEMPLATE_ORDER:
        nb = nbformat.read(out / f"{template}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], template
        shown = json.dumps(outputs)
        assert "differs from GPT-2 here" in shown, template
        if template == "patching":
            assert ("run in parallel" in shown) == (architecture == "gpt_neox")
            assert ("grouped-query" in shown) == (architecture == "llama")
        if template == "mlp_neurons":
            assert ("MLPs are gated" in shown) == (architecture == "llama")
    results = json.loads((out / "results.json").read_text())["templates"]
    assert_as_stored(architecture, results)  # the golden run of this family: the same settings (tests/golden.py)
    assert results["patching"]["metric"]["engine"] == "fast path" and results["dla"]["additivity"]["ok"]
    assert ("pos_embed" in results["dla"]["components"]["labels"]) is False
    assert len(results["mlp_neurons"]["neurons"]["exact"]) == (256 if architecture == "gpt_neox" else 128)
