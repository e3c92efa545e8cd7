"""`python -m sensor` is the `bflow` command."""

import sys

from sensor.cli import main

sys.exit(main())
