"""Small GPT-2-architecture models, built and saved locally with no network.

The tests load them through :func:`helpers.models.load.load_model`, the same path a researcher's ``gpt2``
takes, and ``make run MODEL=demo`` uses one so the whole pipeline can be seen without the hub. Each
saved config carries a marker (:data:`TOY_MODEL_KEY`) so every notebook run on a toy
model says so plainly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from helpers.models.sources import load_gpt2_tokenizer
from helpers.paths import PARAMS_DIR

# The architectures a toy model can have (Hugging Face model_type), each with small local windows and
# partial rotary where its family has them, so that every path of the engine runs on a few-layer model.
# In a toy model's saved config: what it is, so every notebook run on one says it is not a trained model.
TOY_MODEL_KEY = "circuit_suite_toy_model"
TOY_ARCHITECTURES = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "gemma", "gemma2", "opt")


def toy_config(architecture: str, *, n_layers: int, n_heads: int, d_model: int, n_ctx: int, vocab_size: int,
               bos: int | None, eos: int | None, weight_std: float, n_kv_heads: int | None = None) -> Any:
    """A small transformers config of ``architecture`` (see :data:`TOY_ARCHITECTURES`).

    Grouped-query attention (``n_kv_heads``) defaults to half the heads for Llama, Mistral and Qwen2 and one
    key/value head (multi-query) for Gemma; local windows of 4 positions on alternate layers for GPT-Neo,
    Qwen2 and Gemma 2, and on every layer for Mistral; rotary on a quarter of each head for GPT-NeoX and
    half for GPT-J; parallel attention and MLP for GPT-NeoX and GPT-J.
    """
    # deferred: transformers takes seconds to import; only building a toy needs it
    import transformers

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=False)
    d_head = d_model // n_heads
    alternate = ["sliding_attention" if layer % 2 == 0 else "full_attention" for layer in range(n_layers)]
    rotary_family = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         intermediate_size=2 * d_model, max_position_embeddings=n_ctx, initializer_range=weight_std)
    if architecture == "gpt2":
        return transformers.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx,
                                       initializer_range=weight_std, **{**common, "tie_word_embeddings": True})
    if architecture == "gpt_neo":
        return transformers.GPTNeoConfig(hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
                                         max_position_embeddings=n_ctx, attention_types=[[["global", "local"], n_layers // 2]]
                                         if n_layers % 2 == 0 else [[["global"], n_layers]], window_size=4,
                                         initializer_range=weight_std, **common)
    if architecture == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                          intermediate_size=4 * d_model, max_position_embeddings=n_ctx,
                                          rotary_pct=0.25, use_parallel_residual=True, initializer_range=weight_std,
                                          **common)
    if architecture == "gptj":
        return transformers.GPTJConfig(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx,
                                       rotary_dim=d_head // 2, initializer_range=weight_std, **common)
    if architecture in ("llama", "mistral", "qwen2"):
        kv = n_kv_heads if n_kv_heads is not None else max(1, n_heads // 2)
        config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                        "qwen2": transformers.Qwen2Config}[architecture]
        extra: dict[str, Any] = {}
        if architecture == "mistral":
            extra = dict(sliding_window=4)
        if architecture == "qwen2":
            extra = dict(use_sliding_window=True, sliding_window=4, max_window_layers=0, layer_types=alternate)
        return config_class(num_key_value_heads=kv, **rotary_family, **extra, **common)
    if architecture in ("gemma", "gemma2"):
        kv = n_kv_heads if n_kv_heads is not None else (1 if architecture == "gemma" else max(1, n_heads // 2))
        config_class = transformers.GemmaConfig if architecture == "gemma" else transformers.Gemma2Config
        extra = {} if architecture == "gemma" else dict(sliding_window=4, layer_types=alternate,
                                                        query_pre_attn_scalar=2 * d_head)
        return config_class(num_key_value_heads=kv, head_dim=d_head, **rotary_family, **extra,
                            **{**common, "tie_word_embeddings": True})
    if architecture == "opt":
        return transformers.OPTConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                      ffn_dim=4 * d_model, max_position_embeddings=n_ctx, word_embed_proj_dim=d_model,
                                      init_std=weight_std, **common)
    raise ValueError(f"architecture = {architecture!r}: use one of {', '.join(TOY_ARCHITECTURES)}")


def build_toy_model(
    directory: str | Path,
    *,
    architecture: str = "gpt2",
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    n_ctx: int = 128,
    n_kv_heads: int | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    weight_std: float = 0.02,
    description: str = "random weights",
) -> Path:
    """Save a model of ``architecture`` (:data:`TOY_ARCHITECTURES`) with random weights, and the tokenizer
    (GPT-2's unless given), to ``directory``.

    Normalisation weights and biases are random too, not the usual ones and zeros (Gemma's offsets
    likewise), so that folding them (compatibility mode) is exercised and, for LayerNorm, leaves a
    non-zero unembedding bias, as in real GPT-2: an attribution that forgets that bias fails the tests.
    ``weight_std`` is the standard deviation of the other weights: GPT-2's own 0.02 gives a model whose
    every effect is of order 1e-3; 0.3 gives effects of order 1 (what a test needs for a difference to
    mean something).
    """
    # deferred: transformers takes seconds to import; only building a toy needs it
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    config = toy_config(architecture, n_layers=n_layers, n_heads=n_heads, d_model=d_model, n_ctx=n_ctx,
                        vocab_size=len(tokenizer), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                        weight_std=weight_std, n_kv_heads=n_kv_heads)
    setattr(config, TOY_MODEL_KEY, f"{architecture}, {n_layers} layers, {n_heads} heads, d_model {d_model}, {description}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    offset = architecture in ("gemma", "gemma2")  # Gemma stores norm weights as offsets from 1
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_norm(name) and param.ndim == 1:
                if name.endswith("weight"):
                    param.copy_((0.0 if offset else 1.0) + 0.3 * torch.randn(param.shape, generator=generator))
                else:
                    param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return _save(model, tokenizer, directory)


def _save(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Save a built model and its tokenizer as any Hugging Face model directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _is_norm(name: str) -> bool:
    """A normalisation layer's parameter, whatever the architecture calls it."""
    return any(part in name for part in (".ln_", "ln_f", "norm", "layer_norm", "layernorm"))


def ensure_demo_model(directory: Path) -> Path:
    """Build the demo model (:func:`build_demo_ioi_model`: a planted IOI circuit, so ``make run TASK=ioi
    MODEL=demo`` shows a model that does the task) into ``directory`` once; later calls reuse it, unless
    it was built by an older version of the suite."""
    config = directory / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get(TOY_MODEL_KEY) == DEMO_DESCRIPTION:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted build never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=directory.parent))
    try:
        build_demo_ioi_model(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


# Where the planted model keeps each kind of information in its residual stream.
_TOKEN, _POSITION, _PREVIOUS = slice(0, 32), slice(32, 64), slice(64, 96)
_ANCHOR = (96, 97)


@dataclass(frozen=True)
class PlantedHeads:
    """Which heads of :func:`build_planted_model` do what (layer, head)."""

    previous_token: tuple[int, int] = (0, 0)
    duplicate_token: tuple[int, int] = (0, 1)
    silent: tuple[int, int] = (0, 2)  # attends, but its output is planted to be exactly zero
    induction: tuple[int, int] = (1, 0)  # also the copying head: it writes the token it attends to
    anti_copy: tuple[int, int] = (1, 1)  # writes minus the token it attends to (a negative copying head)


PLANTED = PlantedHeads()
PLANTED_DESCRIPTION = ("2 layers, 4 heads, d_model 256, hand-set previous-token, duplicate-token, induction (copying) "
                       "and anti-copying heads")


_D_MODEL, _N_HEADS, _N_CTX = 256, 4, 32  # the hand-set models' shape
_D_HEAD = _D_MODEL // _N_HEADS


def _hand_set_gpt2(tokenizer: Any, *, n_layers: int, seed: int, **config: Any) -> tuple[Any, torch.Generator, Tensor]:
    """The start both hand-set models share: a GPT-2 of :data:`_D_MODEL` with small random weights, unit
    LayerNorms, zero MLPs, each token's random unit code in the token subspace, a one-hot position code and
    the LayerNorm anchor. Returns the model, the generator (for the random weights set after) and the codes."""
    # deferred: transformers takes seconds to import; only building a toy needs it
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=_N_CTX, n_embd=_D_MODEL, n_layer=n_layers, n_head=_N_HEADS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, activation_function="gelu_new",
        **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        for name, param in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            if ".mlp." in name:
                param.zero_()
        codes = torch.randn(model.config.vocab_size, 32, generator=generator)
        codes = codes / codes.norm(dim=-1, keepdim=True)
        wte = model.transformer.wte.weight
        wte.zero_()
        wte[:, _TOKEN] = codes
        wpe = model.transformer.wpe.weight
        wpe.zero_()
        wpe[:, _POSITION] = torch.eye(_N_CTX)
        wpe[:, _ANCHOR[0]], wpe[:, _ANCHOR[1]] = 8.0, -8.0
    return model, generator, codes


def _plant(model: Any, layer: int, head: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zero one head's weights and return its query, key and value input columns and its output rows
    (views into ``c_attn`` and ``c_proj``, to be set by hand under ``torch.no_grad``)."""
    attn = model.transformer.h[layer].attn
    columns = [slice(kind * _D_MODEL + head * _D_HEAD, kind * _D_MODEL + (head + 1) * _D_HEAD) for kind in range(3)]
    for cols in columns:
        attn.c_attn.weight[:, cols] = 0.0
        attn.c_attn.bias[cols] = 0.0
    rows = slice(head * _D_HEAD, (head + 1) * _D_HEAD)
    attn.c_proj.weight[rows] = 0.0
    return (*(attn.c_attn.weight[:, cols] for cols in columns), attn.c_proj.weight[rows])  # type: ignore[return-value]


def _plant_previous_token(model: Any, layer: int, head: int) -> None:
    """A previous-token head: the query at position p looks for the key of position p - 1, and the head
    writes the token code it finds into the previous-token subspace."""
    w_q, w_k, w_v, w_o = _plant(model, layer, head)
    w_q[_POSITION.start + 1 : _POSITION.stop, : _N_CTX - 1] = 40.0 * torch.eye(_N_CTX - 1)
    w_k[_POSITION, :_N_CTX] = torch.eye(32)
    w_v[_TOKEN, :32] = torch.eye(32)
    w_o[:32, _PREVIOUS] = torch.eye(32)


def build_planted_model(directory: str | Path, *, tokenizer: Any = None, seed: int = 0) -> Path:
    """Save a 2-layer, 4-head GPT-2 whose heads are set by hand to known roles (see :data:`PLANTED`).

    The residual stream (d_model 256) has separate subspaces: a random 32-dimensional code of the
    current token, a one-hot code of the position (so ``n_ctx`` is 32), the previous token's code (written
    by the previous-token head), and a large constant "anchor" that keeps every LayerNorm scale nearly
    the same, so hand-set attention scores behave as designed. MLPs are zero; the other heads have
    small random weights. The unembedding is the (tied) embedding, so the induction head, which writes
    the code of the token it attends to, raises that token's logit: a copying head.
    """
    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    model, generator, _ = _hand_set_gpt2(tokenizer, n_layers=2, seed=seed, **{TOY_MODEL_KEY: PLANTED_DESCRIPTION})
    plant = partial(_plant, model)
    with torch.no_grad():
        eye = torch.eye(32)
        _plant_previous_token(model, *PLANTED.previous_token)
        # duplicate-token head: the query matches keys with the same token code, never its own position
        w_q, w_k, w_v, w_o = plant(*PLANTED.duplicate_token)
        w_q[_TOKEN, :32] = 40.0 * eye
        w_q[_POSITION, 32:] = -80.0 * eye
        w_k[_TOKEN, :32] = eye
        w_k[_POSITION, 32:] = eye
        # silent head: random attention, output weights exactly zero
        w_q, w_k, w_v, w_o = plant(*PLANTED.silent)
        w_q.copy_(torch.randn(w_q.shape, generator=generator))
        w_k.copy_(torch.randn(w_k.shape, generator=generator))
        w_v.copy_(torch.randn(w_v.shape, generator=generator))
        # induction head: the query's token code matches the key's previous-token code (K-composition
        # with the previous-token head); it copies the attended token's code into the token subspace
        w_q, w_k, w_v, w_o = plant(*PLANTED.induction)
        w_q[_TOKEN, :32] = 40.0 * eye
        w_k[_PREVIOUS, :32] = eye
        w_v[_TOKEN, :32] = eye
        w_o[:32, _TOKEN] = 4.0 * eye
        # anti-copying head: attends by a random match between query and key token codes (so attention
        # varies from word to word) and writes minus the code of the token it attends to
        w_q, w_k, w_v, w_o = plant(*PLANTED.anti_copy)
        w_q[_TOKEN, :32] = 16.0 * torch.randn(32, 32, generator=generator)
        w_k[_TOKEN, :32] = eye
        w_v[_TOKEN, :32] = eye
        w_o[:32, _TOKEN] = -1.0 * eye  # weaker than the copying head, which still wins where it attends
    return _save(model, tokenizer, directory)


@dataclass(frozen=True)
class PlantedNeuron:
    """The neuron of :func:`build_planted_neuron_model` that alone answers its task."""

    layer: int = 1
    neuron: int = 7
    trigger: tuple[str, str] = (" happy", " sad")  # the final token of clean / corrupted prompts
    answers: tuple[str, str] = (" yes", " no")  # what the neuron makes the model say / not say


PLANTED_NEURON = PlantedNeuron()


def build_planted_neuron_model(directory: str | Path, *, tokenizer: Any = None) -> Path:
    """Save a random 2-layer GPT-2 (d_model 64) with one MLP neuron set by hand: it fires when the final
    token is ``" happy"`` (not ``" sad"``) and writes ``" yes"`` minus ``" no"`` into the unembedding, so
    it alone carries the answer of prompts ending in either word (see :data:`PLANTED_NEURON`)."""
    # deferred: transformers takes seconds to import; only building a toy needs it
    from transformers import GPT2LMHeadModel

    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    directory = build_toy_model(directory, tokenizer=tokenizer, seed=1,
                                description=f"random weights and a planted neuron L{PLANTED_NEURON.layer}N"
                                            f"{PLANTED_NEURON.neuron}")
    model = GPT2LMHeadModel.from_pretrained(directory)

    def token(text: str) -> int:
        return int(tokenizer(text, add_special_tokens=False)["input_ids"][0])

    with torch.no_grad():
        wte = model.transformer.wte.weight  # tied with the unembedding
        mlp = model.transformer.h[PLANTED_NEURON.layer].mlp
        on, off = (wte[token(t)] for t in PLANTED_NEURON.trigger)
        yes, no = (wte[token(t)] for t in PLANTED_NEURON.answers)
        reads = (on - off) / (on - off).norm()
        mlp.c_fc.weight[:, PLANTED_NEURON.neuron] = 3.0 * reads
        mlp.c_fc.bias[PLANTED_NEURON.neuron] = 0.0
        mlp.c_proj.weight[PLANTED_NEURON.neuron] = 2.0 * (yes - no) / (yes - no).norm() ** 2
    model.save_pretrained(directory)
    return directory


@dataclass(frozen=True)
class PlantedIOI:
    """Which heads of :func:`build_demo_ioi_model` do what (layer, head): the IOI paper's circuit, by hand."""

    previous_token: tuple[int, int] = (0, 0)
    duplicate_token: tuple[int, int] = (0, 1)  # at the second mention of a name, attends to the first
    induction: tuple[int, int] = (1, 0)
    s_inhibition: tuple[int, int] = (1, 2)  # at the end, attends to the repeated name and writes which it is
    name_mover: tuple[int, int] = (2, 0)  # at the end, attends to the name not inhibited and copies it
    negative_name_mover: tuple[int, int] = (2, 1)  # attends the same way, writes minus the name (weaker)


PLANTED_IOI = PlantedIOI()
DEMO_DESCRIPTION = ("3 layers, 4 heads, d_model 256, a hand-set IOI circuit: duplicate-token head L0H1, "
                    "S-inhibition head L1H2, name mover L2H0, negative name mover L2H1; previous-token L0H0 and "
                    "induction L1H0")
# The demo's extra subspaces: a flag on the names of params/ioi.yaml, the duplicate-name flag the
# duplicate-token head writes, and the inhibited name's code the S-inhibition head writes.
_IS_NAME, _DUPLICATE, _INHIBITED = 98, 99, slice(100, 132)
# Where heads write the tokens they promote: the (untied) unembedding reads only this subspace, so the
# token subspace that values read holds each position's own token and nothing a head wrote.
_OUTPUT = slice(132, 164)


def demo_names() -> list[str]:
    """The names the demo knows as names: params/ioi.yaml's NAME list (also what ioi_demo and ioi_abc use)."""
    return list(yaml.safe_load((PARAMS_DIR / "ioi.yaml").read_text(encoding="utf-8"))["words"]["NAME"])


def build_demo_ioi_model(directory: str | Path, *, tokenizer: Any = None, names: list[str] | None = None,
                         seed: int = 0) -> Path:
    """Save a 3-layer, 4-head GPT-2 that does IOI by the circuit the IOI paper found, set by hand (see
    :data:`PLANTED_IOI`), on the residual-stream layout of :func:`build_planted_model` plus three subspaces:

    - the embedding of each name (``names``, with its leading space) carries a name flag;
    - the duplicate-token head (layer 0) attends from each token to an earlier copy of it (else to BOS)
      and writes the attended token's name flag: at the second mention of the subject, "a name seen
      before"; a repeated non-name (" to", " the") writes nothing;
    - the S-inhibition head (layer 1) attends to the flagged position, from the final one, and writes the
      code of the token there (the subject) into the inhibited-name subspace;
    - the name mover (layer 2) attends from the final position to names, minus the inhibited one, and
      copies the name it finds (the indirect object) into an output subspace, the only one the (untied)
      unembedding reads, as that name's logit; the negative name mover attends the same way and writes
      a quarter of it with the opposite sign;
    - previous-token and induction heads as in :func:`build_planted_model`; MLPs zero; the remaining heads
      small random weights.
    """
    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    names = names if names is not None else demo_names()
    model, _, codes = _hand_set_gpt2(tokenizer, n_layers=3, seed=seed, tie_word_embeddings=False,
                                     **{TOY_MODEL_KEY: DEMO_DESCRIPTION})
    plant = partial(_plant, model)
    name_tokens = []
    for name in names:
        ids = tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            name_tokens.append(ids[0])
    with torch.no_grad():
        model.transformer.wte.weight[name_tokens, _IS_NAME] = 1.0
        unembed = model.lm_head.weight  # [vocab, d_model]
        unembed.zero_()
        unembed[:, _OUTPUT] = codes
        eye = torch.eye(32)
        _plant_previous_token(model, *PLANTED_IOI.previous_token)
        # duplicate-token head: the same token elsewhere, never its own position; BOS as the sink when there
        # is no earlier copy; it writes the attended token's name flag
        w_q, w_k, w_v, w_o = plant(*PLANTED_IOI.duplicate_token)
        w_q[_TOKEN, :32] = 60.0 * eye
        w_q[_POSITION, 32:] = -80.0 * eye
        w_q[_ANCHOR[0], 32] = 4.0  # every query scores the BOS key (position 0) a little
        w_k[_TOKEN, :32] = eye
        w_k[_POSITION, 32:] = eye
        w_v[_IS_NAME, 0] = 1.0
        w_o[0, _DUPLICATE] = 1.0
        # induction head, as in build_planted_model (weaker: it must not drown the name mover)
        w_q, w_k, w_v, w_o = plant(*PLANTED_IOI.induction)
        w_q[_TOKEN, :32] = 40.0 * eye
        w_k[_PREVIOUS, :32] = eye
        w_v[_TOKEN, :32] = eye
        w_o[:32, _OUTPUT] = eye
        # S-inhibition head: attends to the position flagged as a repeated name, writes its token's code
        w_q, w_k, w_v, w_o = plant(*PLANTED_IOI.s_inhibition)
        w_q[_ANCHOR[0], 0] = 2.0
        w_k[_DUPLICATE, 0] = 6.0
        w_v[_TOKEN, :32] = eye
        w_o[:32, _INHIBITED] = eye
        # name mover and negative name mover: names, minus the inhibited one; copy (or negate) the name found
        for head, write in ((PLANTED_IOI.name_mover, 8.0), (PLANTED_IOI.negative_name_mover, -2.0)):
            w_q, w_k, w_v, w_o = plant(*head)
            w_q[_ANCHOR[0], 0] = 2.0
            w_k[_IS_NAME, 0] = 6.0
            w_q[_INHIBITED, 1:33] = -30.0 * eye
            w_k[_TOKEN, 1:33] = eye
            w_v[_TOKEN, :32] = eye
            w_o[:32, _OUTPUT] = write * eye
    return _save(model, tokenizer, directory)


@dataclass(frozen=True)
class PlantedSequence:
    """Which heads of :func:`build_planted_sequence_model` do what (layer, head): month continuation by a
    two-step path through a position-dependent head."""

    previous_token: tuple[int, int] = (0, 0)  # moves each token's code one position on (attends by position)
    successor: tuple[int, int] = (1, 0)  # at each position, maps the month there or one back to the next month
    anti_copy: tuple[int, int] = (1, 1)  # writes minus the token at its own position: at the end, a comma


PLANTED_SEQUENCE = PlantedSequence()
SEQUENCE_DESCRIPTION = ("2 layers, 4 heads, d_model 256, hand-set month continuation: previous-token head L0H0 "
                        "feeds successor head L1H0; anti-copying head L1H1")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


def planted_sequence_task(n_prompts: int = 24) -> dict[str, Any]:
    """The task :func:`build_planted_sequence_model` does: months separated by commas, the prompt ending with
    a comma (params/months.yaml's third template and a bare one), so the last month is one position before
    the answer is predicted."""
    return {
        "name": "planted_months", "model": "gpt2", "n_prompts": n_prompts, "seed": 0, "cyclic": ["M"],
        "description": "Month continuation on the planted sequence model: the next month after a comma.",
        "templates": ["The months went by: [M], [M+1], [M+2], [M+3],", " [M], [M+1], [M+2], [M+3],"],
        "corrupted": {"templates": ["The months went by: [M], [M+1], [M+2], [M+2],", " [M], [M+1], [M+2], [M+2],"]},
        "correct": " [M+4]", "incorrect": " [M+3]", "words": {"M": list(MONTHS)},
    }


def build_planted_sequence_model(directory: str | Path, *, tokenizer: Any = None, seed: int = 0) -> Path:
    """Save a 2-layer, 4-head GPT-2 that continues a list of months after a comma
    (:func:`planted_sequence_task`) by a two-step path, set by hand (see :data:`PLANTED_SEQUENCE`) on the
    residual-stream layout of :func:`build_planted_model`:

    - the previous-token head (layer 0) attends by position to the position before and writes the code of
      the token there into the previous-token subspace: at the final comma, the last month;
    - the successor head (layer 1) attends to its own position (by position) and maps the month code in the
      token and the previous-token subspaces to the next month's code (December to January), into an
      output subspace that the (untied) unembedding alone reads; the map sends BOS's and the comma's codes
      to zero. At the end it reads the last month only through the previous-token head, so the circuit
      needs that head's path from the embeddings;
    - the anti-copying head (layer 1) attends to its own position and writes minus the code of its token:
      a negative copying head whose output at the end (minus the comma) is the same in clean and corrupted
      prompts, so it has no effect on the task;
    - MLPs zero; the remaining heads small random weights.
    """
    tokenizer = tokenizer if tokenizer is not None else load_gpt2_tokenizer()
    model, _, codes = _hand_set_gpt2(tokenizer, n_layers=2, seed=seed, tie_word_embeddings=False,
                                     **{TOY_MODEL_KEY: SEQUENCE_DESCRIPTION})
    plant = partial(_plant, model)

    def token(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens in this tokenizer: the planted sequence model needs one")
        return int(ids[0])

    months = [token(f" {m}") for m in MONTHS]
    silent = [t for t in (tokenizer.bos_token_id, token(",")) if t is not None]
    inputs = codes[months + silent]  # [14, 32]
    targets = torch.cat([codes[months[1:] + months[:1]], torch.zeros(len(silent), 32)])
    successor_map = torch.linalg.pinv(inputs) @ targets  # exact: 14 independent codes in 32 dimensions
    with torch.no_grad():
        unembed = model.lm_head.weight
        unembed.zero_()
        unembed[:, _OUTPUT] = codes
        eye = torch.eye(32)
        _plant_previous_token(model, *PLANTED_SEQUENCE.previous_token)
        for head, value, write in ((PLANTED_SEQUENCE.successor, successor_map, 8.0),
                                   (PLANTED_SEQUENCE.anti_copy, eye, -2.0)):
            w_q, w_k, w_v, w_o = plant(*head)
            w_q[_POSITION, :32] = 40.0 * eye  # its own position
            w_k[_POSITION, :32] = eye
            w_v[_TOKEN, :32] = value
            if head == PLANTED_SEQUENCE.successor:
                w_v[_PREVIOUS, :32] = value
            w_o[:32, _OUTPUT] = write * eye
    return _save(model, tokenizer, directory)
