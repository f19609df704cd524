"""The set-up every template starts with: task, model and prompts, loaded once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from IPython.display import Markdown

from helpers.model import load_model, toy_model_notice
from helpers.tasks import PromptSet, TaskSpec, build_prompts, load_task
from helpers.viz import configure_outputs


@dataclass(frozen=True)
class Session:
    """A loaded task: its spec, the model (compatibility mode, eval) and the tokenized prompts."""

    spec: TaskSpec
    model: Any
    prompts: PromptSet
    toy_notice: str | None

    def header(self) -> Markdown:
        """What this notebook ran on, with a plain warning when the model is a toy."""
        cfg = self.model.cfg
        lines = [
            f"**Task** `{self.spec.name}`: {self.spec.description.strip()}",
            f"**Model** `{self.spec.model}`: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
            f"on {cfg.device}. **Prompts**: {len(self.prompts)} (seed {self.spec.seed}), e.g. "
            f"`{self.prompts.clean_prompts[0]}` -> `{self.prompts.correct_answers[0]!r}` rather than "
            f"`{self.prompts.incorrect_answers[0]!r}`; corrupted: `{self.prompts.corrupted_prompts[0]}`.",
        ]
        if self.toy_notice:
            lines.insert(0, f"> **Warning. {self.toy_notice}**")
        return Markdown("\n\n".join(lines))


def start_session(task: str | Mapping[str, Any], *, device: str = "auto", dtype: str = "float32") -> Session:
    """Load and validate the task, load its model, and build its prompts; choose how figures are stored."""
    configure_outputs()
    spec = load_task(task)
    model = load_model(spec.model, device=device, dtype=dtype)
    prompts = build_prompts(spec, model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    return Session(spec, model, prompts, toy_model_notice(spec.model))
