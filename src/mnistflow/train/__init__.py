"""Training: the loop with its checkpoints, the optimizers and schedulers, and several processes
under torchrun."""
