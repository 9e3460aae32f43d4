"""Workflows: engines, validation and reports composed into the jobs the CLI runs."""
