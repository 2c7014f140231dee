"""Inputs the fuzzers (`make fuzz`) or their harnesses turned up, kept as regression tests.

Each test holds the offending bytes inline, minimised, and says what must happen
instead. The last tests replay the committed seed corpus through the harnesses, so the
harnesses in fuzz/targets.py cannot rot between fuzzing runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz import run
from fuzz.targets import TARGETS

from fixedip import config
from fixedip.proto.http1 import Body, ProtocolError, ResponseParser

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


# config_loader ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a = " + "[" * 2000 + "]" * 2000, id="nested-arrays"),
        pytest.param("a = " + "{ b = " * 2000 + "1" + " }" * 2000, id="nested-inline-tables"),
        pytest.param(
            '[egress]\nips = [{ bind = "10.0.0.1", public = ' + "[" * 600 + "]" * 600 + " }]",
            id="nested-inside-a-real-key",
        ),
    ],
)
def test_deeply_nested_toml_is_refused_with_a_config_error_not_a_recursion_error(
    text: str,
) -> None:
    # tomllib recurses once per nesting level and raised RecursionError past ~450 levels.
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "fixedip.toml")

    assert str(caught.value).startswith("fixedip.toml: ")
    assert "nested too deeply" in str(caught.value)


# http_response ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 199 OK\r\nContent-Length: 5\r\n\r\nhello", id="content-length"),
        pytest.param(
            b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 177 OK\r\nContent-Length: 2\r\n\r\nok",
            id="after-100-continue",
        ),
    ],
)
def test_an_interim_1xx_response_never_yields_a_body(data: bytes) -> None:
    # RFC 9110 section 15.2: a 1xx response ends with its header section. The gateway
    # drops 1xx heads but writes Body events through, so such a "body" reached the
    # client unframed, ahead of the real response: a response injected into the client
    # connection, and every later response on it answering the wrong request.
    parser = ResponseParser()
    parser.expect("GET")
    try:
        events = parser.feed(data)
    except ProtocolError as error:
        assert error.status == 502
        return

    assert [event for event in events if isinstance(event, Body)] == []


# The harnesses themselves ----------------------------------------------------------------


def test_every_fuzz_target_has_a_harness_and_a_seed_corpus() -> None:
    assert set(run.TARGET_NAMES) == set(TARGETS)
    for name in TARGETS:
        assert any((CORPUS / name).iterdir()), f"fuzz/corpus/{name}/ is empty"


@pytest.mark.parametrize(
    ("target", "seed"),
    [
        pytest.param(target.name, seed, id=f"{target.name}/{seed.name}")
        for target in sorted(CORPUS.iterdir())
        for seed in sorted(target.iterdir())
    ],
)
def test_every_committed_seed_passes_its_fuzz_harness(target: str, seed: Path) -> None:
    TARGETS[target](seed.read_bytes())
