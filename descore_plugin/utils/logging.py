"""Where the library's messages go: nowhere of their own until a command line says so.

Every module of the package logs through `logging.getLogger(__name__)` (accelerate's `get_logger(__name__)` where the
message belongs to a multi-process run), so a user who imports `Trainer` or `DeScoreReward` silences or redirects it
like any other library (`logging.getLogger("descore_plugin").setLevel(logging.WARNING)`). A command-line entry point
(`descore`, the recipes) calls `setup_logging` once: progress messages then print as plain lines, information on
stdout and warnings and errors on stderr, as they did when the library printed them.

    from descore_plugin.utils.logging import setup_logging

    setup_logging()            # info and up: what a command shows by default
    setup_logging(-1)          # warnings only;  setup_logging(1): debug messages too
"""

import logging
import sys

__all__ = ["setup_logging", "PACKAGE_LOGGER"]

PACKAGE_LOGGER = "descore_plugin"  # the root of every module's logger (integrations/ is descore_plugin.integrations)
_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _StandardStream(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` / `sys.stderr` is at the time of the message (not at set-up), so
    output redirected later (pytest's capture, contextlib.redirect_stdout) still receives it."""

    def __init__(self, name: str):
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns one; the stream is looked up at each message instead
        pass


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Show the package's messages as plain lines: below WARNING on stdout, WARNING and up on stderr.

    verbosity: -1 (or less) warnings and errors only, 0 information too (the default of every command), 1 (or
    more) debug messages as well. Calling it again replaces the handlers it installed before, never adds more."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StandardStream)]:
        logger.removeHandler(handler)
    out, err = _StandardStream("stdout"), _StandardStream("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(_LEVELS[max(-1, min(1, verbosity))])
    return logger
