"""Helpers the test files share: the offline subprocess runner (`run`), and what conftest's fixtures build."""
