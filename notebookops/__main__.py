"""``python -m notebookops``: the command line (see :mod:`notebookops.cli`)."""

from __future__ import annotations

import sys

from ._cli_entry import main

sys.exit(main())
