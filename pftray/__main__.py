"""``python -m pftray``: the same entry point as the ``pftray`` console script."""

import sys

from pftray.cli import main

sys.exit(main())
