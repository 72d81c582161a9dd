"""``python -m dragonfly.cli.dfget``."""

import sys

from dragonfly.cli.dfget.command import main

sys.exit(main())
