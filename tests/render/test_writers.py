"""The two writers the renderers stand on: any value they accept reads back unchanged."""

from __future__ import annotations

from typing import Any

import hcl2
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.plan.render import cfnyaml, hcl
from fixedip.plan.render.hcl import Expr, Heredoc, Nested

scalars = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**31), max_value=2**31),
    st.booleans(),
    st.sampled_from(
        [
            "yes",
            "No",
            "on",
            "null",
            "~",
            "1.0",
            "0x10",
            "2010-09-09",
            "a: b",
            "- x",
            "#c",
            "line\n",
            "two\nlines",
            " lead\nx",
            "trail \nx",
            "tab\tx\n",
            "'q'",
        ]
    ),
)
keys = st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["Fn::GetAtt", "yes", "a b"]))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, min_size=1, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True),
        documents,
        min_size=1,
        max_size=4,
    )
)
def test_yaml_writer_round_trips_through_a_yaml_parser(template: dict[str, Any]) -> None:
    assert yaml.safe_load(cfnyaml.dumps(template, header="a header\nof two lines")) == template


def test_yaml_writer_quotes_words_that_end_in_a_newline() -> None:
    """A regular expression's `$` also matches before a final newline: `A\n` is no
    plain word (found by the round-trip property above)."""
    for template in ({"A": {"A\n": ""}}, {"A": {"0": "", "A\n": ""}}, {"A": {"B": "A\n"}}):
        assert yaml.safe_load(cfnyaml.dumps(template)) == template


def test_yaml_writer_keeps_scripts_as_literal_blocks() -> None:
    text = cfnyaml.dumps({"UserData": {"Fn::Sub": '#!/bin/bash\necho "${Name}"\n'}})
    assert 'Fn::Sub: |\n    #!/bin/bash\n    echo "${Name}"\n' in text


def hcl_value(value: Any) -> Any:
    doc = hcl2.loads(hcl.dumps([hcl.Block("locals", (), {"v": value})]))
    return doc["locals"][0]["v"]


def test_hcl_strings_escape_quotes_backslashes_and_newlines() -> None:
    assert hcl_value('say "hi"\\now\nnext') == '"say \\"hi\\"\\\\now\\nnext"'


def test_hcl_literal_keeps_dollar_braces_out_of_interpolation() -> None:
    assert hcl.literal("echo ${HOME} %{x}") == "echo $${HOME} %%{x}"


def test_hcl_writer_nests_blocks_objects_heredocs_and_expressions() -> None:
    text = hcl.dumps(
        [
            hcl.resource(
                "aws_thing",
                "x",
                {
                    "count": 2,
                    "name": "${local.name}-x",
                    "enabled": True,
                    "ids": Expr("aws_subnet.a[*].id"),
                    "tags": {"fixedip:name": "n", "Name": "x"},
                    "script": Heredoc("#!/bin/sh\necho $${HOME}\n"),
                    "rule": [Nested({"port": 1}), Nested({"port": 2})],
                },
                comments=("checkov:skip=CKV_X_1:because",),
            )
        ]
    )
    (resource,) = hcl2.loads(text)["resource"]
    body = resource['"aws_thing"']['"x"']
    assert body["count"] == 2
    assert body["enabled"] is True
    assert body["ids"] == "${aws_subnet.a[*].id}"
    assert body["tags"] == {'"fixedip:name"': '"n"', "Name": '"x"'}
    assert [r["port"] for r in body["rule"]] == [1, 2]
    assert "echo $${HOME}" in body["script"]
    assert "  #checkov:skip=CKV_X_1:because\n" in text
