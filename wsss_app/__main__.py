"""``python -m wsss_app``: the ``wsss-ext`` command (what ``torchrun -m wsss_app`` runs)."""

import sys

from wsss_app.cli import main

sys.exit(main())
