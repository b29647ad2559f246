"""One module per `torch-badnet` subcommand; each exposes `add_parser(subparsers)` and `run(args) -> int`."""
