"""Tiny real-architecture models built in-process, the synthetic world and the learning measurements."""
