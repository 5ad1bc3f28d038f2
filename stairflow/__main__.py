"""`python -m stairflow`: the same as the `stairflow` command."""

import sys

from ._cli import main

sys.exit(main())
