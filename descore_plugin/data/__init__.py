"""Pair files, video decoding and frame sampling, the streaming loaders and the pre-flight data check."""
