"""The hot path is compiled wherever it can be, completely, and from the current source."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from fixedip import compiled


def can_compile() -> bool:
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which("cc") is not None and headers.exists()


def test_every_hot_module_names_a_source_file() -> None:
    for name in compiled.HOT_MODULES:
        assert (compiled.SRC / (name.replace(".", "/") + ".py")).is_file(), name


def test_the_hot_path_is_compiled_all_or_nothing_and_stamped() -> None:
    built = compiled.compiled_modules()
    assert built in ([], list(compiled.HOT_MODULES)), built
    assert compiled.STAMP.exists() or not built
    assert compiled.describe().startswith("hot path compiled" if built else "hot path in pure")


def test_make_test_compiles_the_hot_path_where_a_c_compiler_is_present() -> None:
    """`make test` builds it first (.ci/run installs gcc and python3-dev): a silent
    fall-back to pure Python would cost half the throughput unnoticed. Set
    FIXEDIP_TEST_PURE=1 to run the suite against the pure-Python modules on purpose
    (`scripts/compile --clean` first)."""
    pure = bool(os.environ.get("FIXEDIP_TEST_PURE")) or not can_compile()
    expected = [] if pure else list(compiled.HOT_MODULES)
    assert compiled.compiled_modules() == expected, compiled.describe()
