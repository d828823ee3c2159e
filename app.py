"""SIGMA Studio: ``python app.py`` (``--help`` for the flags)."""

import sys

from studio.main import main

if __name__ == "__main__":
    sys.exit(main())
