"""The demo model (``MODEL=demo``) does the task a newcomer runs first: IOI, by a hand-set circuit whose
heads are where :data:`helpers.models.toys.PLANTED_IOI` says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.analyses.dla import compute_head_attribution, run_final_position_cache
from helpers.models.load import load_model
from helpers.models.toys import PLANTED_IOI, ensure_demo_model
from helpers.tasks.metrics import at_final_pos
from helpers.tasks.prompts import PromptSet, build_prompts, load_task


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: Any) -> Any:
    return load_model(str(ensure_demo_model(tmp_path_factory.mktemp("demo") / "demo")), device="cpu")


@pytest.fixture(scope="module")
def ioi(demo: Any) -> PromptSet:
    return build_prompts(load_task("ioi"), demo.tokenizer, prepend_bos=bool(demo.cfg.default_prepend_bos))


def test_the_demo_does_ioi_and_the_corruption_reverses_it(demo: Any, ioi: PromptSet) -> None:
    """make run TASK=ioi MODEL=demo: the default 64 prompts of every IOI template."""
    with torch.no_grad():
        clean = ioi.metric(at_final_pos(demo(ioi.clean_tokens), ioi.final_pos))
        corrupted = ioi.metric(at_final_pos(demo(ioi.corrupted_tokens), ioi.final_pos))
    assert len(clean) == 64
    assert float(clean.mean()) > 3.0 and float((clean > 0).float().mean()) >= 0.95
    assert float(corrupted.mean()) < -3.0  # swapping the names swaps the answer


def test_each_planted_head_attends_where_its_role_says(demo: Any, ioi: PromptSet) -> None:
    """Duplicate-token: second subject -> first; S-inhibition: end -> second subject; name movers: end ->
    indirect object. Read from the model's own attention patterns, prompt by prompt."""
    with torch.no_grad():
        _, cache = demo.run_with_cache(ioi.clean_tokens)
    def positions(role: str, occurrence: int) -> torch.Tensor:
        return torch.tensor([[w.position for w in words if w.role == role][occurrence] for words in ioi.word_positions])

    io, s1, s2 = positions("IO", 0), positions("S", 0), positions("S", 1)
    rows, final = torch.arange(len(ioi)), ioi.final_pos

    def attention(head: tuple[int, int], query: torch.Tensor, key: torch.Tensor) -> float:
        layer, index = head
        return float(cache[f"blocks.{layer}.attn.hook_pattern"][rows, index, query, key].mean())

    assert attention(PLANTED_IOI.duplicate_token, s2, s1) > 0.9
    assert attention(PLANTED_IOI.s_inhibition, final, s2) > 0.9
    for mover in (PLANTED_IOI.name_mover, PLANTED_IOI.negative_name_mover):
        assert attention(mover, final, io) > 0.9 and attention(mover, final, s1) + attention(mover, final, s2) < 0.05


def test_direct_attribution_names_the_name_movers(demo: Any, ioi: PromptSet) -> None:
    heads = compute_head_attribution(demo, run_final_position_cache(demo, ioi)).mean
    positive, negative = heads.flatten().argmax(), heads.flatten().argmin()
    n_heads = demo.cfg.n_heads
    assert (int(positive) // n_heads, int(positive) % n_heads) == PLANTED_IOI.name_mover
    assert (int(negative) // n_heads, int(negative) % n_heads) == PLANTED_IOI.negative_name_mover


def test_the_demo_is_built_where_it_is_asked(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    assert (ensure_demo_model(tmp_path / "demo") / "config.json").is_file()
