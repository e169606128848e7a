"""The `descore` command and its sub-commands."""

from descore_plugin.cli.commands import default_device_and_dtype, main  # noqa: F401
