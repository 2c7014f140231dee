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
    for name in compiled.C_MODULES:
        assert (compiled.SRC / (name.replace(".", "/") + ".c")).is_file(), name


def test_the_hot_path_is_compiled_all_or_nothing_and_stamped() -> None:
    built = compiled.compiled_modules()
    assert built in ([], list(compiled.BUILT)), built
    assert compiled.STAMP.exists() or not built
    assert compiled.describe().startswith("hot path compiled" if built else "hot path in pure")


def test_make_test_compiles_the_hot_path_where_a_c_compiler_is_present() -> None:
    """`make test` builds it first (.ci/run installs gcc and python3-dev): a silent
    fall-back to pure Python would cost half the throughput unnoticed. Set
    FIXEDIP_TEST_PURE=1 to run the suite against the pure-Python modules on purpose
    (`scripts/compile --clean` first)."""
    pure = bool(os.environ.get("FIXEDIP_TEST_PURE")) or not can_compile()
    expected = [] if pure else list(compiled.BUILT)
    assert compiled.compiled_modules() == expected, compiled.describe()


PURE_SMOKE = """
import time
from fixedip.gateway.runtime import Attempt
from fixedip.ingress.observe import receipt_record
from fixedip.observe.flowlog import FlowRecord
from fixedip.proto.http1 import ResponseHead, whole_request, whole_response

head, _ = whole_request(b"GET http://v.test/ HTTP/1.1\\r\\nHost: v.test\\r\\n\\r\\n", 65536)
assert (head.method, head.target, head.get(b"host")) == ("GET", b"http://v.test/", b"v.test")
answer, _ = whole_response(b"HTTP/1.1 204 No Content\\r\\nServer: x\\r\\n\\r\\n", 65536)
assert isinstance(answer, ResponseHead) and answer.status == 204
record = FlowRecord(time.time(), "http", "http", "p", None, "GET", *[None] * 5, 200)
assert '"status":200' in record.to_json()
assert '"route":"/hook"' in receipt_record(1.0, "p", "POST", "/hook", 200, "accepted", 5).to_json()
assert Attempt().route is None
print("ok")
"""


def test_the_pure_modules_run_where_nothing_is_compiled(tmp_path: Path) -> None:
    """Without a C compiler the .py modules run: the classes whose __init__ is written
    out for mypyc (and their subclasses) must work as plain Python too."""
    import subprocess
    import sys

    pure = tmp_path / "src"
    shutil.copytree(
        compiled.SRC / "fixedip",
        pure / "fixedip",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", ".compiled"),
    )
    out = subprocess.run(
        [sys.executable, "-c", PURE_SMOKE],
        env={**os.environ, "PYTHONPATH": str(pure)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
