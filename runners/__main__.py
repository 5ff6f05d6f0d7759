"""``python -m runners``: the runner CLI."""

import sys

from runners.cli import main

sys.exit(main())
