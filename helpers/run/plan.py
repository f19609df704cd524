"""What a run will do, settled before any template executes: the templates and their order, the task
file, the command line's overrides and the prompts checked against the model's context (:class:`RunPlan`).
Only light modules are imported here: a bad task is reported before torch, transformers or Jupyter's
libraries load.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only light modules here: a bad task file or argument is reported before torch, transformers and
# nbformat are imported (seconds); the rest is imported where it is used.
from helpers.paths import NOTEBOOKS_DIR, TEMPLATES_DIR, run_folder_name
from helpers.tasks.spec import TaskError, TaskSpec, load_task, resolve_task_path

# Templates run in this order (later ones read the earlier ones' results); others follow by name.
TEMPLATE_ORDER = ("dla", "patching", "head_functions", "copy_scores", "circuit_discovery", "circuit", "mlp_neurons",
                  "vector_arithmetic")
# Templates that read several tasks' results instead of running on one task.
CROSS_TASK_TEMPLATES = ("compare", "sweep")
# What the comparison reads from each task's results.json.
COMPARED_TEMPLATES = ("dla", "patching", "head_functions", "copy_scores")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, settled and validated before any template executes."""

    spec: TaskSpec
    task_file: Path
    task_text: str
    templates: tuple[Path, ...]
    device: str
    dtype: str
    output_dir: Path
    n_prompts_built: int


def available_templates() -> list[str]:
    """The per-task templates, in run order."""
    names = [p.stem for p in TEMPLATES_DIR.glob("*.ipynb") if p.stem not in CROSS_TASK_TEMPLATES]
    order = {name: i for i, name in enumerate(TEMPLATE_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def template_path(name: str) -> Path:
    """The template ``name`` (``dla``, ``compare``, ...) in :data:`TEMPLATES_DIR`."""
    return TEMPLATES_DIR / f"{name}.ipynb"


def prepare_run(
    task: str,
    *,
    model: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    templates: list[str] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    when_checked: Callable[[TaskSpec, list[str]], None] | None = None,
) -> RunPlan:
    """Validate everything that can be validated without running the model. ``when_checked`` is called with
    the spec and the templates once the task file, the command line and the template list are valid,
    before the tokenizer loads (the runner starts its kernel's warm-up there).

    Raises:
        TaskError, ModelLoadError, ValueError: with a message naming the problem and the fix.
    """
    task_file = resolve_task_path(task)
    spec = load_task(task_file)
    own_model = spec.model
    check_command_line(spec, n_prompts=n_prompts, seed=seed)
    if model is not None:
        model = model_argument(model)
    spec = spec.with_overrides(model=model, n_prompts=n_prompts, seed=seed)
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.models.load import load_tokenizer, pick_device, prepends_bos
    from helpers.models.sources import settle_hub_access
    from helpers.tasks.prompts import build_prompts

    pick_device(device)
    settle_hub_access(spec.model, log=lambda line: print(line, file=sys.stderr))
    known = available_templates()
    chosen = templates or known
    for name in chosen:
        if name not in known:
            raise ValueError(f"TEMPLATES: no template named {name!r}. Fix: use some of {', '.join(known)}.")
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        raise ValueError(f"TEMPLATES={','.join(chosen)}: {', '.join(repeated)} listed more than once. "
                         "Fix: list each template once.")
    if when_checked is not None:
        when_checked(spec, list(chosen))
    prompts = build_prompts(spec, load_tokenizer(spec.model), prepend_bos=prepends_bos(spec.model))
    check_context(prompts, spec)
    return RunPlan(
        spec=spec,
        task_file=task_file,
        task_text=task_file.read_text(encoding="utf-8"),
        templates=tuple(template_path(name) for name in chosen),
        device=device,
        dtype=dtype,
        output_dir=notebooks_dir / run_folder_name(spec.name, spec.model, own_model),
        n_prompts_built=len(prompts),
    )


def check_command_line(spec: TaskSpec, *, n_prompts: int | None, seed: int | None) -> None:
    """``N=`` and ``SEED=`` are reported as what they are: values from the command line."""
    if n_prompts is not None:
        if n_prompts < 1:
            raise ValueError(f"N={n_prompts} (command line): a run needs at least 1 prompt. Fix: N=16 for a quick "
                             f"run, or leave N out for the task file's {spec.n_prompts}.")
        if spec.is_explicit and n_prompts > len(spec.prompts):
            raise ValueError(f"N={n_prompts} (command line): {spec.source} lists {len(spec.prompts)} prompts. "
                             f"Fix: N={len(spec.prompts)} or fewer, or leave N out.")
    if seed is not None and seed < 0:
        raise ValueError(f"SEED={seed} (command line): seeds are whole numbers from 0. Fix: SEED=1, or leave SEED "
                         f"out for the task file's {spec.seed}.")


def check_context(prompts: Any, spec: TaskSpec) -> None:
    """Every prompt fits the model's context (read from its config), or the longest is named."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.models.load import model_config

    config = model_config(spec.model)
    limit = next((int(v) for v in (getattr(config, name, None) for name in ("n_positions", "max_position_embeddings",
                                                                             "n_ctx")) if v), None)
    if limit is None:
        return
    lengths = (prompts.final_pos + 1).tolist()
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] > limit:
        raise TaskError(spec.source, "templates" if not spec.is_explicit else f"prompts[{longest}]",
                        prompts.clean_prompts[longest], f"is {lengths[longest]} tokens, but model '{spec.model}' "
                        f"reads at most {limit}", "shorten the prompt, or use a model with a longer context")


def loads_model(templates: list[str]) -> bool:
    """Whether any of these templates (names in :data:`TEMPLATES_DIR`) starts a session, which loads the
    model: a run of templates that do not is not worth a warm-up."""
    for name in templates:
        path = template_path(name)
        if path.is_file() and any("start_session(" in "".join(cell.get("source", ""))
                                  for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", [])
                                  if cell.get("cell_type") == "code"):
            return True
    return False


def model_argument(model: str) -> str:
    """A model as a run uses and records it: a local directory made absolute (the kernel runs in
    another directory), anything else (a hub name, ``demo``) as given."""
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model
