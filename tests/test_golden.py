"""Every template's results, to the bit, as stored in ``tests/golden/`` (see ``tests/golden.py``): on the demo
model and on each architecture family's toy. A change that claims to alter no result is held to that here;
one that means to alter results stores them again and says why. The GPT-NeoX and Llama toys are compared by
test_architectures' run of the whole suite, which is the same run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from golden import DEMO, differences, golden_names, golden_path, run_sections

# runs test_architectures makes anyway (test_the_whole_suite_runs_through_the_runner) and compares there
COMPARED_ELSEWHERE = ("gpt_neox", "llama")


def assert_as_stored(name: str, sections: dict[str, Any]) -> None:
    stored = json.loads(golden_path(name).read_text())
    found = differences(sections, stored)
    assert not found, (f"{len(found)} result(s) of the '{name}' run differ from tests/golden/{name}.json (first 20):\n"
                       + "\n".join(found[:20]))


def test_every_golden_run_is_stored_and_compared() -> None:
    names = golden_names()
    assert DEMO in names and len(names) == 11
    assert all(golden_path(name).is_file() for name in names), [n for n in names if not golden_path(n).is_file()]
    assert set(COMPARED_ELSEWHERE) < set(names)


def test_the_comparison_sees_a_change_in_the_last_bit() -> None:
    stored = json.loads(golden_path(DEMO).read_text())
    changed = json.loads(json.dumps(stored))
    value = stored["dla"]["logit_diff"]["mean"]
    changed["dla"]["logit_diff"]["mean"] = math.nextafter(value, math.inf)  # one unit in the last place
    assert differences(changed, stored) == [f"/dla/logit_diff/mean: {math.nextafter(value, math.inf)!r}, stored {value!r}"]
    changed["dla"]["logit_diff"]["per_prompt"].pop()
    assert differences(changed, stored)[1] == "/dla/logit_diff/per_prompt: 15 items, stored 16"
    del changed["dla"]
    assert differences(changed, stored) == ["/dla: missing"] and differences(stored, stored) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in golden_names() if n not in COMPARED_ELSEWHERE])
def test_every_template_gives_the_stored_results(name: str, tmp_path: Path, gpt2_tokenizer: Any) -> None:
    assert_as_stored(name, run_sections(name, tmp_path, gpt2_tokenizer))
