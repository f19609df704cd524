"""Where the project's files live, resolved from this package's location (never from the cwd)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
TEMPLATES_DIR = REPO_ROOT / "templates"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CACHE_DIR = REPO_ROOT / ".cache"

# CI and the build machines keep GPT-2's tokenizer files beside the checkout (no hub there).
SHARED_GPT2_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
