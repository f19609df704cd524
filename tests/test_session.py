"""What every template starts with: the task, the model and the prompts, loaded once, and the header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.io as pio
import pytest
import torch

from helpers.figures import images, viz
from helpers.figures.viz import PLOTLY_RENDERERS
from helpers.notebook import session as session_module
from helpers.tasks.prompts import TaskError, build_prompts, load_task


@pytest.fixture(scope="module")
def session(toy_model_dir: Path) -> session_module.Session:
    task = load_task("ioi").with_overrides(model=str(toy_model_dir), n_prompts=6, seed=2).to_dict()
    return session_module.start_session(task, device="cpu")


def test_the_session_holds_the_validated_task_its_model_and_its_prompts(session: session_module.Session,
                                                                         toy_model_dir: Path) -> None:
    assert session.spec.name == "ioi" and session.spec.n_prompts == 6 and session.spec.seed == 2
    assert session.spec.model == str(toy_model_dir)
    assert not session.model.training and (session.model.cfg.n_layers, session.model.cfg.n_heads) == (2, 4)
    # the prompts are the task's own, built with the model's tokenizer and its BOS rule
    expected = build_prompts(session.spec, session.model.tokenizer, prepend_bos=True)
    assert session.prompts.clean_prompts == expected.clean_prompts
    assert torch.equal(session.prompts.clean_tokens, expected.clean_tokens)
    assert int(session.prompts.clean_tokens[0, 0]) == session.model.tokenizer.bos_token_id


def test_the_header_says_what_ran_and_warns_of_a_toy(session: session_module.Session) -> None:
    text = session.header().data
    assert text.startswith("> **Warning. TOY MODEL:") and "not GPT-2" in text
    assert "2 layers x 4 heads, d_model 64" in text and "6 (seed 2)" in text
    assert session.prompts.clean_prompts[0] in text and repr(session.prompts.correct_answers[0]) in text
    assert session.prompts.corrupted_prompts[0] in text


def test_figures_are_stored_as_the_session_chooses(session: session_module.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pio.renderers.default == PLOTLY_RENDERERS  # by hand: the JSON and the PNG, drawn in the kernel
    try:
        monkeypatch.setenv(images.STATIC_IMAGES_BY_RUNNER, "1")  # in the runner's kernels: the JSON, the runner draws
        viz.configure_outputs()
        assert pio.renderers.default == "plotly_mimetype"
    finally:
        monkeypatch.delenv(images.STATIC_IMAGES_BY_RUNNER)
        viz.configure_outputs()
    assert pio.renderers.default == PLOTLY_RENDERERS


def test_a_bad_task_fails_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Any] = []
    monkeypatch.setattr(session_module, "load_model", lambda *args, **kwargs: loaded.append(args))
    with pytest.raises(TaskError, match="n_prompts"):
        session_module.start_session({**load_task("ioi").to_dict(), "n_prompts": 0})
    assert loaded == []
