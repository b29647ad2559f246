"""`python -m torch_badnet` = the `torch-badnet` command."""

from .cli import entry

entry()
