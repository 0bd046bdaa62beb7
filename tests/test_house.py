"""House rules that hold over the whole package, checked on its source."""

import ast
from pathlib import Path

import frs_cli

MAX_FUNCTION_LINES = 90
# Functions allowed past the limit, by "path:name" (path relative to frs_cli/): none.
KNOWN_LONG: set[str] = set()


def long_functions(root: Path, limit: int) -> dict[str, int]:
    """``{"path:name": lines}`` of every function or method under ``root`` longer than ``limit`` lines, counted
    from its ``def`` line to its last line (a nested function counts in its parent too)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out[f"{path.relative_to(root).as_posix()}:{node.name}"] = lines
    return out


def test_long_functions_are_found_with_their_length(tmp_path):
    (tmp_path / "pkg").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n{body}\n\n\nclass C:\n    def long(self):\n"
                                           + "\n".join(f"        y{i} = {i}" for i in range(9)) + "\n")
    assert long_functions(tmp_path, 6) == {"pkg/m.py:long": 10}
    assert long_functions(tmp_path, 10) == {}


def test_no_function_in_the_package_is_longer_than_90_lines():
    found = long_functions(Path(frs_cli.__file__).parent, MAX_FUNCTION_LINES)
    offenders = {k: v for k, v in found.items() if k not in KNOWN_LONG}
    assert offenders == {}, "split these functions (lines each): " + ", ".join(
        f"{k} ({v})" for k, v in sorted(offenders.items(), key=lambda kv: -kv[1]))


def test_each_xdist_worker_takes_its_share_of_the_cores():
    """Under ``pytest -n N`` (the README's test command) each worker's torch, and the processes its tests start, use
    the machine's cores divided among the N workers (conftest): two workers of two threads each on two cores spin
    their OpenMP threads against each other."""
    import os

    import pytest
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not workers:
        pytest.skip("runs under pytest-xdist (-n N)")
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    assert torch.get_num_threads() == share and os.environ["OMP_NUM_THREADS"] == str(share)
