"""The set-up every template starts with: task, model and prompts, loaded once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from IPython.display import Markdown

from helpers.figures.viz import configure_outputs
from helpers.models.architectures import Architecture, describe
from helpers.models.load import load_model, toy_model_notice
from helpers.tasks.prompts import PromptSet, TaskSpec, build_prompts, load_task


@dataclass(frozen=True)
class Session:
    """A loaded task: its spec, the model (compatibility mode, eval) and the tokenized prompts."""

    spec: TaskSpec
    model: Any
    prompts: PromptSet
    toy_notice: str | None

    @property
    def architecture(self) -> Architecture:
        return describe(self.model)

    def header(self, template: str | None = None) -> Markdown:
        """What this notebook ran on, with a plain warning when the model is a toy, and what this model's
        architecture changes in ``template``'s reading (every difference from GPT-2 with ``None``)."""
        cfg = self.model.cfg
        arch = self.architecture
        lines = [
            f"**Task** `{self.spec.name}`: {self.spec.description.strip()}",
            f"**Model** `{self.spec.model}` ({arch.name}): {cfg.n_layers} layers x {cfg.n_heads} heads, d_model "
            f"{cfg.d_model}, on {cfg.device}. **Prompts**: {len(self.prompts)} (seed {self.spec.seed}), e.g. "
            f"`{self.prompts.clean_prompts[0]}` -> `{self.prompts.correct_answers[0]!r}` rather than "
            f"`{self.prompts.incorrect_answers[0]!r}`; corrupted: `{self.prompts.corrupted_prompts[0]}`.",
        ]
        notes = [text for _, text in arch.notes()] if template is None else arch.notes_for(template)
        if notes:
            lines.append(f"**How this {arch.name} model differs from GPT-2 here:**\n" + "\n".join(f"- {n}" for n in notes))
        if self.toy_notice:
            lines.insert(0, f"> **Warning. {self.toy_notice}**")
        return Markdown("\n\n".join(lines))


def start_session(task: str | Mapping[str, Any], *, device: str = "auto", dtype: str = "float32") -> Session:
    """Load and validate the task, load its model, and build its prompts; choose how figures are stored."""
    configure_outputs()
    spec = load_task(task)
    model = load_model(spec.model, device=device, dtype=dtype, reuse=True)
    prompts = build_prompts(spec, model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    return Session(spec, model, prompts, toy_model_notice(spec.model))
