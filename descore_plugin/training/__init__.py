"""Training: THE run loop every trainer runs on (`loop`, post-training included), the reward-model trainers (stage 1,
stage 2, distillation), the losses, the run directory and distributed checkpoint state."""
