"""Preference accuracy of a reward model on labelled pairs."""
