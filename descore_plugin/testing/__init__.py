"""Tiny real-architecture models built in-process (Qwen-VL judges, Wan pipelines), the synthetic world, the world Wan
that draws it (`world_wan`, `world_vae`) and the learning measurements."""
