"""Stored outputs: every template's section of ``results.json``, to the bit, on the demo model and on each
architecture family's toy model, as the suite computed them when they were stored.

A refactoring that claims to change nothing is held to it by ``tests/test_golden.py``, which reruns the same
runs and compares every number with ``==`` (JSON keeps a float's every bit). Store them again only when a
change is meant to alter results, and say so in the commit:

    .venv/bin/python tests/golden.py            # every run
    .venv/bin/python tests/golden.py gpt2 demo  # some

They are this machine kind's bits (2-core CPU, the CPU wheel of torch CI installs): a machine whose matrix
products round differently would need them stored again at the commit before a change, then compared after.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
DEMO = "demo"
# (task, prompts) per run; the toys' seeds are tests/checks.py's
TASK, TOY_PROMPTS, DEMO_PROMPTS = "ioi", 8, 16


def golden_names() -> tuple[str, ...]:
    from helpers.models.toys import TOY_ARCHITECTURES

    return (DEMO, *TOY_ARCHITECTURES)


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def model_for(name: str, folder: Path, tokenizer: Any) -> str:
    """The model a golden run uses: the demo model, or the family's toy (weights of std 0.3, the tests' seed)."""
    from helpers.models.toys import build_toy_model, ensure_demo_model

    if name == DEMO:  # built where the run is, not in the repository's cache
        return str(ensure_demo_model(folder / "demo"))
    from tests.checks import SEEDS

    return str(build_toy_model(folder / name, architecture=name, tokenizer=tokenizer, weight_std=0.3,
                               seed=SEEDS[name]))


def run_sections(name: str, folder: Path, tokenizer: Any, *, model: str | None = None) -> dict[str, Any]:
    """Run every template of IOI on the golden run's model into ``folder`` and return results.json's
    ``templates`` section (``model``: a toy already built for it)."""
    from helpers.run.execute import run_tasks
    from tests.checks import run_dir

    notebooks = folder / f"notebooks-{name}"
    lines: list[str] = []
    model = model or model_for(name, folder, tokenizer)
    code = run_tasks([TASK], model=model, n_prompts=DEMO_PROMPTS if name == DEMO else TOY_PROMPTS, device="cpu",
                     notebooks_dir=notebooks, log=lines.append)
    if code != 0:
        raise RuntimeError(f"the golden run '{name}' failed:\n" + "\n".join(lines))
    return json.loads((run_dir(notebooks, TASK, model) / "results.json").read_text())["templates"]


def differences(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, by path (floats compared with ==, so to the bit)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}/{key}: missing" for key in expected if key not in actual]
        found += [f"{path}/{key}: not stored" for key in actual if key not in expected]
        for key in expected:
            if key in actual:
                found += differences(actual[key], expected[key], f"{path}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{path}: {len(actual)} items, stored {len(expected)}"]
        return [d for i, (a, e) in enumerate(zip(actual, expected)) for d in differences(a, e, f"{path}[{i}]")]
    if type(actual) is not type(expected) or actual != expected:
        if isinstance(actual, float) and isinstance(expected, float) and actual != actual and expected != expected:
            return []  # NaN stored as NaN
        return [f"{path}: {actual!r}, stored {expected!r}"]
    return []


def main(names: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from helpers.models.sources import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer()
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name in names or golden_names():
        with tempfile.TemporaryDirectory() as folder:
            sections = run_sections(name, Path(folder), tokenizer)
        golden_path(name).write_text(json.dumps(sections, indent=1, sort_keys=True) + "\n")
        print(f"stored {golden_path(name)}")


if __name__ == "__main__":
    main(sys.argv[1:])
