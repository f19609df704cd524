"""``python -m helpers.run``: the command line (:mod:`helpers.run.cli`)."""

import sys

from helpers.run.cli import main

sys.exit(main())
