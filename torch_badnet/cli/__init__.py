"""The `torch-badnet` command: the parser (main.py) and one module per subcommand (commands/)."""
