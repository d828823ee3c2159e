"""``python -m sigma_core``: the command line in :mod:`sigma_core.cli`."""

from sigma_core.cli import main

raise SystemExit(main())
