"""`python -m gpt2_cockpit.cli ...`: the same as the `gpt2-cockpit` command."""

import sys

from .main import main

sys.exit(main())
