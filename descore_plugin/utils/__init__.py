"""Plumbing every part uses: atomic files that follow the umask, user errors and the command-line contract."""
