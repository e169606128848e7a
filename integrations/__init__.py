"""Adapters from DeScore to post-training loops and to Wan-2.1 through diffusers."""
