"""stockpipe library: plain, orchestrator-free pipeline steps."""
