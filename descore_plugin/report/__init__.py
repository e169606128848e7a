"""Self-contained HTML reports of scores, evaluations and runs."""
