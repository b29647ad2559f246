"""`python -m torch_badnet` = the `torch-badnet` command."""

from .cli.main import entry

entry()
