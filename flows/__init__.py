"""Prefect flows and the command line: thin wiring over the `pipeline` library."""
