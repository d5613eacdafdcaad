"""Subcommands of the `tinygptv` console command, one module each."""
