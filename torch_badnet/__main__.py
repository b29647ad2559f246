"""`python -m torch_badnet` = the `torch-badnet` command."""

import sys

from .cli import main

sys.exit(main())
