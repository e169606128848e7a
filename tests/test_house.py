"""House rules of the code base: the library logs and never prints; command lines show its messages."""

import ast
import logging
from pathlib import Path

from descore_plugin.utils.logging import setup_logging

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted([*(ROOT / "descore_plugin").rglob("*.py"), *(ROOT / "integrations").rglob("*.py")])
# Where printing is the job: the `descore` command, and the one-line user-error contract of every command line.
PRINTS_ALLOWED = {"descore_plugin/cli", "descore_plugin/utils/errors.py"}


def _prints_outside_entry_points(path: Path) -> list[int]:
    """Lines of `print(...)` calls of a module that are not inside a function named `main` or `*_main`."""
    found = []

    def visit(node, in_main: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_main = in_main or node.name == "main" or node.name.endswith("_main")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "print"
            and not in_main
        ):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, in_main)

    tree = ast.parse(path.read_text())
    for node in tree.body:  # the `if __name__ == "__main__":` block of a module is an entry point too
        is_main_block = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        visit(node, is_main_block)
    return found


def test_library_modules_log_instead_of_printing():
    offenders = {}
    for path in LIBRARY:
        name = path.relative_to(ROOT).as_posix()
        if any(name == allowed or name.startswith(allowed + "/") for allowed in PRINTS_ALLOWED):
            continue
        if lines := _prints_outside_entry_points(path):
            offenders[name] = lines
    assert not offenders, f"print() in library code (use logging.getLogger(__name__)): {offenders}"


def test_module_loggers_are_named_after_their_module():
    """`logging.getLogger(__name__)` (or accelerate's get_logger(__name__)): a user silences a module by its name."""

    def named_by_a_string(node) -> bool:
        function = getattr(node, "func", None)
        name = getattr(function, "attr", getattr(function, "id", None))
        # a third-party logger looked up by its own name (to filter its messages) is not one of ours
        first = node.args[0] if isinstance(node, ast.Call) and node.args else None
        ours = isinstance(first, ast.Constant) and str(first.value).startswith("descore_plugin")
        return name in ("getLogger", "get_logger") and ours

    literal = [
        path.relative_to(ROOT).as_posix()
        for path in LIBRARY
        if path.name != "logging.py" and any(named_by_a_string(node) for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert not literal, f"loggers named by a string instead of __name__: {literal}"


def test_setup_logging_prints_info_on_stdout_and_warnings_on_stderr(capsys):
    logger = logging.getLogger("descore_plugin.some.module")
    setup_logging()
    setup_logging()  # a second call replaces its handlers: every line still prints once
    logger.debug("hidden")
    logger.info("step %d done", 3)
    logger.warning("left out %d rows", 2)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("step 3 done\n", "left out 2 rows\n")
    setup_logging(-1)
    logger.info("quiet now")
    logger.error("still shown")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "still shown\n")
    setup_logging(1)
    logger.debug("shown with verbosity 1")
    assert capsys.readouterr().out == "shown with verbosity 1\n"
    setup_logging()


def test_prints_outside_entry_points_reader(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    print('x')\n\n"
        "def main():\n    print('ok')\n    def inner():\n        print('ok')\n\n"
        "if __name__ == '__main__':\n    print('ok')\n\n"
        "class A:\n    def g(self):\n        self.accelerator.print('x')\n"
    )
    assert _prints_outside_entry_points(module) == [2, 14]
