"""The HTTP head path runs in C where scripts/compile built it (fixedip/proto/_heads.c)
and in Python where it did not: tests that use `heads` run against both."""

from __future__ import annotations

import os

import pytest

from fixedip.proto import http1

_PYTHON_TWINS = {
    "_parse_request": http1._parse_request_py,
    "_parse_response": http1._parse_response_py,
    "_forward_head": http1._forward_head_py,
}


@pytest.fixture(params=["c", "python"])
def heads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which head path the test runs against: "c" or "python"."""
    if request.param == "c":
        if not http1.HEADS_IN_C:
            if os.environ.get("FIXEDIP_TEST_PURE"):
                pytest.skip("FIXEDIP_TEST_PURE: nothing compiled, on purpose")
            pytest.fail("fixedip.proto._heads was not built: run `make compile`")
    else:
        for name, twin in _PYTHON_TWINS.items():
            monkeypatch.setattr(http1, name, twin)
        monkeypatch.setattr(http1, "HEADS_IN_C", False)
    return str(request.param)
