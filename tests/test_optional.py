"""Optional packages: a missing one, one installed but broken, and a Ctrl-C inside the import each say so."""

import sys

import pytest

from frs_cli.errors import ConfigError, DataError
from frs_cli.optional import require

HINT = "pip install 'frs[onnx]'"


def _package(root, name: str, body: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body, encoding="utf-8")


def test_a_missing_package_is_named_with_its_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not importable, as when it is not installed
    with pytest.raises(DataError) as caught:
        require("onnxruntime", "export --onnx", HINT, error=DataError)
    assert caught.value.message == "export --onnx: expected the Python package 'onnxruntime' to be installed, got ImportError"
    assert caught.value.hint == HINT
    with pytest.raises(ConfigError, match="expected the Python package 'frs_no_such_package' to be installed"):
        require("frs_no_such_package.sub", "x", HINT)


def test_an_installed_package_that_does_not_import_is_not_called_missing(tmp_path, monkeypatch):
    """A build that does not match (numpy's ABI, another Python) fails inside its import: its own message is
    given and the hint is to install it again (before: "expected ... to be installed", which it was)."""
    _package(tmp_path, "frs_broken_pkg", "raise ImportError('import numpy failed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        require("frs_broken_pkg", "export --onnx", HINT)
    assert caught.value.message == ("export --onnx: the Python package 'frs_broken_pkg' is installed but does not "
                                    "import (import numpy failed)")
    assert caught.value.hint == "install it again: " + HINT


def test_ctrl_c_inside_an_import_that_turns_it_into_an_import_error_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    """Compiled modules can turn a KeyboardInterrupt raised during their initialisation into an ImportError
    (onnxruntime: "initialization failed"); a Ctrl-C there is the user's stop, not a missing package."""
    _package(tmp_path, "frs_interrupted_pkg", (
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    raise ImportError('initialization failed')\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        require("frs_interrupted_pkg", "export --onnx", HINT)
