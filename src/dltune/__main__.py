"""`python -m dltune` runs the command line."""

import sys

from dltune.cli import main

sys.exit(main())
