"""The model architectures the suite knows, and what each one changes in the analyses.

Every model is loaded through TransformerLens's ``TransformerBridge`` in compatibility mode, so the
analyses read the same hook names and weight shapes (``W_Q``, ``W_O``, ``hook_z``...) on every
architecture. What differs is the arithmetic between those hooks, and it changes how some figures read:

- *Positions*: GPT-2, GPT-Neo and OPT add a learned position embedding to the token embedding (a
  ``pos_embed`` component in direct logit attribution); GPT-NeoX (Pythia), GPT-J, Llama, Mistral, Qwen2
  and Gemma rotate queries and keys instead (rotary embeddings: no positional component in the
  residual stream; Pythia and GPT-J rotate only part of each head).
- *Parallel blocks* (GPT-NeoX, GPT-J): attention and MLP read the same residual stream and both add to
  it; there is no stream between them (``hook_resid_mid``).
- *Normalisation*: LayerNorm centres and scales; RMSNorm (Llama, Mistral, Qwen2, Gemma) only scales.
  Gemma 2 also normalises each sublayer's output before it joins the stream (post-norms), caps
  attention scores and final logits with ``cap * tanh(x / cap)``, and scales token embeddings by
  ``sqrt(d_model)``, as Gemma does.
- *Gated MLPs* (Llama, Mistral, Qwen2, Gemma): each neuron is ``act(gate . x) * (up . x)``; the neuron
  analyses patch and read that product.
- *Grouped-query attention* (Llama 3, Mistral, Qwen2, Gemma): several query heads share one key and value
  head. Per-head analyses are per query head.
- *Attention scale and windows*: GPT-Neo does not divide attention scores by ``sqrt(d_head)``; Gemma 2
  divides by ``sqrt(query_pre_attn_scalar)``. GPT-Neo, Mistral, Qwen2 and Gemma 2 restrict some layers to
  a local window of recent keys.

:data:`FAMILIES` is the registry: each family's Hugging Face ``model_type`` values, an example hub name
and whether TransformerLens prepends BOS for it. :func:`describe` reads one loaded model's
:class:`Architecture` from its family and its config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Rotary = Literal["halves", "pairs"]


@dataclass(frozen=True)
class Family:
    """One architecture family the suite has a fast path for (and tests on a toy model of its own)."""

    name: str
    model_types: tuple[str, ...]  # Hugging Face config.model_type values
    example: str  # a hub name a researcher would type
    prepend_bos: bool  # TransformerLens's default for the family
    rotary: Rotary | None = None  # rotate halves (GPT-NeoX, Llama) or adjacent pairs (GPT-J)


FAMILIES: tuple[Family, ...] = (
    Family("GPT-2", ("gpt2",), "gpt2", True),
    Family("GPT-Neo", ("gpt_neo",), "EleutherAI/gpt-neo-125M", True),
    Family("GPT-NeoX (Pythia)", ("gpt_neox",), "EleutherAI/pythia-160m", False, "halves"),
    Family("GPT-J", ("gptj",), "EleutherAI/gpt-j-6b", True, "pairs"),
    Family("Llama", ("llama",), "meta-llama/Llama-3.2-1B", True, "halves"),
    Family("Mistral", ("mistral",), "mistralai/Mistral-7B-v0.1", True, "halves"),
    Family("Qwen2", ("qwen2",), "Qwen/Qwen2.5-0.5B", False, "halves"),
    Family("Gemma", ("gemma",), "google/gemma-2b", True, "halves"),
    Family("Gemma 2", ("gemma2",), "google/gemma-2-2b", True, "halves"),
    Family("OPT", ("opt",), "facebook/opt-125m", True),
)
FAMILY_OF_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_of(model_type: str) -> Family | None:
    """The family of a Hugging Face ``model_type``, or None for an architecture the suite does not know."""
    return FAMILY_OF_MODEL_TYPE.get(model_type)


def prepends_bos(model_type: str) -> bool:
    """Whether prompts of this architecture start with BOS (TransformerLens's default; True if unknown)."""
    family = family_of(model_type)
    return True if family is None else family.prepend_bos


def supported_list() -> str:
    """The known families, for messages: ``GPT-2 (gpt2), GPT-Neo (gpt_neo), ...``."""
    return ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


@dataclass(frozen=True)
class Architecture:
    """What the forward pass of one loaded model does between its hooks (see the module docstring)."""

    family: Family | None  # None: the bridge loads it, but the suite has no fast path for it
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # = n_heads without grouped-query attention
    d_head: int
    normalization: Literal["LN", "RMS"]
    eps: float
    learned_positions: bool
    rotary_dim: int  # 0 without rotary embeddings
    parallel: bool
    gated_mlp: bool
    act_fn: str
    attn_scales: tuple[float, ...]  # per layer: attention scores are multiplied by this
    windows: tuple[int | None, ...]  # per layer: a query sees keys fewer than this many positions back
    attn_softcap: float | None
    final_softcap: float | None
    post_norms: bool  # each sublayer's output is RMS-normalised before it joins the stream (Gemma 2)
    embed_scale: float  # token embeddings are multiplied by this (Gemma: sqrt(d_model))

    @property
    def name(self) -> str:
        return self.family.name if self.family is not None else f"{self.model_type} (no fast path)"

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head a query head reads (as Hugging Face's ``repeat_kv`` lays them out)."""
        return head // self.group_size

    def notes(self) -> list[tuple[tuple[str, ...], str]]:
        """What differs from GPT-2 in this model, a sentence each, with the templates whose reading it
        changes (``"all"``: every template)."""
        everywhere = ("all",)
        notes: list[tuple[tuple[str, ...], str]] = []
        if self.family is None:
            notes.append((("patching", "mlp_neurons"), f"The suite has no fast path for the '{self.model_type}' "
                          "architecture: patching runs on the model's own hooks (exact, slower), and this "
                          "architecture is not among those tested."))
        if not self.learned_positions:
            part = (f" on the first {self.rotary_dim} of each head's {self.d_head} dimensions"
                    if 0 < self.rotary_dim < self.d_head else "")
            notes.append((("dla", "head_functions", "copy_scores"), "Positions are rotary: queries and keys are "
                          "rotated by position" + part + ", so nothing positional is added to the residual stream "
                          "and direct logit attribution has no position-embedding component."))
        if self.parallel:
            notes.append((("dla", "patching", "mlp_neurons", "vector_arithmetic", "circuit", "circuit_discovery"),
                          "Attention and MLP "
                          "run in parallel: both read the same residual stream at each layer and both add to it "
                          "(there is no stream between them, and the logit lens has one point per layer). "
                          "Attributions and patching still add up; patching a layer's attention output leaves its "
                          "MLP's input unchanged."))
        if self.normalization == "RMS":
            notes.append((("dla", "copy_scores"), "Normalisation is RMSNorm: it scales the stream without "
                          "centring it."))
        if self.post_norms:
            notes.append((everywhere, "Each attention and MLP output is RMS-normalised before it joins the stream "
                          "(Gemma 2's post-norms): a head's contribution is its output through that norm's scale, "
                          "which depends on the other heads of its layer."))
        if self.attn_softcap or self.final_softcap:
            caps = [f"{what} at {cap:g}" for what, cap in (("attention scores", self.attn_softcap),
                                                            ("final logits", self.final_softcap)) if cap]
            notes.append((everywhere, "Scores are soft-capped (cap * tanh(x / cap)): " + ", ".join(caps) + ". Direct "
                          "logit attribution explains the logits before the final cap, which are linear in the "
                          "stream; patching and circuits use the model's own, capped logits."))
        if self.embed_scale != 1.0:
            notes.append((("dla",), f"Token embeddings are multiplied by {self.embed_scale:.4g} (sqrt(d_model)) as "
                          "they enter; the embed component includes that factor."))
        if self.gated_mlp:
            notes.append((("mlp_neurons",), "MLPs are gated: a neuron's activation is act(gate . x) * (up . x), the "
                          "product the neuron analyses patch and read; unlike a GELU's, it can be large and "
                          "negative, and the attribution estimate is linear in it."))
        if self.grouped_query:
            notes.append((everywhere, f"Attention is grouped-query: {self.n_heads} query heads share "
                          f"{self.n_kv_heads} key/value head(s), {self.group_size} per group. A head here is a query "
                          "head. Value patching of a head gives that query head the clean values it reads, without "
                          "changing the other heads of its group; its OV circuit uses its group's W_V."))
            notes.append((("circuit_discovery",), "In the graph of edges each query head has a key and a value "
                          "input of its own (its group's key/value projection applied to what that head reads), so "
                          "a path into one head's key does not reach the other heads of its group."))
        default_scale = self.d_head ** -0.5
        if any(not math.isclose(s, default_scale, rel_tol=1e-6) for s in self.attn_scales):
            notes.append((everywhere, "Attention scores are multiplied by "
                          + ", ".join(sorted({f"{s:.4g}" for s in self.attn_scales}))
                          + f" rather than 1/sqrt(d_head) = {default_scale:.4g}."))
        local = sorted({w for w in self.windows if w is not None})
        if local:
            layers = [i for i, w in enumerate(self.windows) if w is not None]
            notes.append((everywhere, f"Layers {', '.join(map(str, layers))} attend only to the last "
                          f"{', '.join(map(str, local))} positions (local attention): their heads cannot read "
                          "words further back."))
        return notes

    def notes_for(self, template: str) -> list[str]:
        """The notes whose reading changes in ``template`` (a template's name, e.g. ``dla``)."""
        return [text for topics, text in self.notes() if "all" in topics or template in topics]


def describe(model: Any) -> Architecture:
    """The architecture of a model loaded by :func:`helpers.models.load.load_model`."""
    cfg = model.cfg
    hf_config = model.original_model.config
    model_type = str(getattr(hf_config, "model_type", "unknown"))
    family = family_of(model_type)
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    n_kv_heads = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    rotary_dim = 0
    if cfg.positional_embedding_type == "rotary":
        rotary_dim = _rotary_dim(model, hf_config, cfg.d_head)
    return Architecture(
        family=family,
        model_type=model_type,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=cfg.d_head,
        normalization="LN" if cfg.normalization_type in ("LN", "LNPre") else "RMS",
        eps=float(cfg.eps),
        learned_positions=cfg.positional_embedding_type == "standard",
        rotary_dim=rotary_dim,
        parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        act_fn=str(cfg.act_fn),
        attn_scales=tuple(_attn_scale(model, hf_config, layer, cfg.d_head) for layer in range(n_layers)),
        windows=_windows(hf_config, n_layers),
        attn_softcap=_positive(getattr(hf_config, "attn_logit_softcapping", None)),
        final_softcap=_positive(getattr(hf_config, "final_logit_softcapping", None)),
        post_norms=hasattr(model.blocks[0], "ln1_post"),
        embed_scale=float(hf_config.hidden_size) ** 0.5 if model_type in ("gemma", "gemma2") else 1.0,
    )


def _positive(value: Any) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


def _rotary_dim(model: Any, hf_config: Any, d_head: int) -> int:
    attn = model.blocks[0].attn.original_component
    for name in ("rotary_ndims", "rotary_dim"):
        value = getattr(attn, name, None)
        if value:
            return int(value)
    factor = getattr(hf_config, "partial_rotary_factor", None) or getattr(hf_config, "rotary_pct", None)
    return int(d_head * float(factor)) if factor else d_head


def _attn_scale(model: Any, hf_config: Any, layer: int, d_head: int) -> float:
    """What the model multiplies attention scores by, read the way the model itself reads it."""
    model_type = getattr(hf_config, "model_type", "")
    if model_type == "gpt_neo":
        return 1.0  # GPT-Neo never scales its attention scores
    if model_type == "gpt2":
        scale = d_head ** -0.5 if getattr(hf_config, "scale_attn_weights", True) else 1.0
        if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer + 1)
        return scale
    scaling = getattr(model.blocks[layer].attn.original_component, "scaling", None)
    return float(scaling) if scaling is not None else d_head ** -0.5


def _windows(hf_config: Any, n_layers: int) -> tuple[int | None, ...]:
    layer_types = getattr(hf_config, "layer_types", None)
    window = getattr(hf_config, "sliding_window", None)
    if getattr(hf_config, "model_type", "") == "gpt_neo":
        kinds = getattr(hf_config, "attention_layers", ["global"] * n_layers)
        return tuple(int(hf_config.window_size) if kind == "local" else None for kind in kinds)
    if layer_types is not None and window:
        return tuple(int(window) if kind == "sliding_attention" else None for kind in layer_types)
    if getattr(hf_config, "model_type", "") == "mistral" and window:
        return (int(window),) * n_layers
    return (None,) * n_layers
