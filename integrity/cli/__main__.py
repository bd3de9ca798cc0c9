"""`python -m integrity.cli`: the `integrity` command."""

import sys

from integrity.cli import main

sys.exit(main())
