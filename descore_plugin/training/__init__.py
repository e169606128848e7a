"""Reward-model training: the trainers, the losses, the run directory and distributed checkpoint state."""
