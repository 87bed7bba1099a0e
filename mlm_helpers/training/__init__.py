"""The training run: the loop, the run around it, checkpoints, outputs, several processes."""
