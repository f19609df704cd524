"""Opening a template in Google Colab: the badge every template starts with, and its set-up cell.

``REPOSITORY`` is the one place the suite's GitHub address is set. ``python -m helpers.notebook.colab`` writes it
into every template (the badge's link and the set-up cell); a test checks that the templates agree with
it. The set-up cell does nothing outside Colab. Inside Colab it clones the repository (once per
session), installs the ``helpers`` package with the requirements it declares, and puts the clone first on
``sys.path``, so ``helpers`` and ``params/`` come from the clone and the template runs top to bottom.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from helpers.paths import TEMPLATES_DIR

REPOSITORY = "https://github.com/circuit-notebooks/circuit-notebooks"
BRANCH = "main"
BADGE_TAG, SETUP_TAG = "colab-badge", "colab-setup"
_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(template: str) -> str:
    """Where Colab opens ``templates/<template>.ipynb`` straight from GitHub."""
    path = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/templates/{template}.ipynb"


def badge(template: str) -> str:
    return (f"[![Open In Colab]({_BADGE_IMAGE})]({colab_url(template)}) (in Colab, run the set-up cell below "
            "first; edit only the parameters cell)")


def setup_source() -> str:
    return f'''# Colab set-up. In Google Colab this fetches the suite and installs what it needs (once per session);
# anywhere else it does nothing. The repository is set in helpers/notebook/colab.py.
import sys

if "google.colab" in sys.modules:
    import subprocess
    from pathlib import Path

    checkout = Path("{Path(REPOSITORY).name}").resolve()
    if not (checkout / "helpers").is_dir():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{BRANCH}", "{REPOSITORY}", str(checkout)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(checkout)], check=True)
    sys.path.insert(0, str(checkout))'''


def stamp(path: Path) -> bool:
    """Put the current badge first and the set-up cell after the title in one template; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    tagged = {tag: next((c for c in nb.cells if tag in c.metadata.get("tags", [])), None) for tag in (BADGE_TAG, SETUP_TAG)}
    if tagged[BADGE_TAG] is None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell("", metadata={"tags": [BADGE_TAG]}))
    if tagged[SETUP_TAG] is None:
        nb.cells.insert(2, nbformat.v4.new_code_cell("", metadata={"tags": [SETUP_TAG]}))
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if BADGE_TAG in tags:
            cell.source = badge(path.stem)
        elif SETUP_TAG in tags:
            cell.source = setup_source()
    nbformat.validate(nb)
    if nbformat.writes(nb) == before:
        return False
    nbformat.write(nb, path)
    return True


def main() -> int:
    for path in sorted(TEMPLATES_DIR.glob("*.ipynb")):
        if stamp(path):
            print(f"updated {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
