"""One training run: its configuration, the pre-run checks, the epoch loop and pickle-free checkpoints."""
