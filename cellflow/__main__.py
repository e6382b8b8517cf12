"""``python -m cellflow``: the command line (also under ``torchrun -m cellflow``)."""

from .cli import main

raise SystemExit(main())
