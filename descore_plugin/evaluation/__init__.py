"""Preference accuracy of a reward model on labelled pairs, and the synthetic world's truth read from the pixels of
generated videos (`world_truth`: the VBench-like columns of `recipes/vbench_mini.py`)."""
