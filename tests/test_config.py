"""The configuration loader: every bad file is a ConfigError naming file, key and what was
expected; good files give one typed, frozen Config."""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from fixedip.config import (
    EMBEDDED_DEFAULT,
    ConfigError,
    embedded_text,
    load,
    parse,
    redacted,
)
from fixedip.policy.tokens import verify_token
from tests.helpers import token_hash

SOURCE = "gw.toml"
EGRESS = '[egress]\nips = ["127.0.0.10"]\n'
# What a pydantic or tomllib error looks like when it leaks through unformatted.
LEAKS = ("Traceback", "pydantic", "Input should", "lax-or-strict", "function-", "Value error")


def error_of(text: str, source: str = SOURCE) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, source)
    message = str(info.value)
    for leak in LEAKS:
        assert leak not in message
    return message


def client(extra: str = "", name: str = "billing") -> str:
    return f'[[clients]]\nname = "{name}"\ntoken_hash = "{token_hash("billing")}"\n{extra}\n'


# --- bad files: (test id, file text, the message's key path, what was expected) -----------

BAD_FILES = [
    (
        "unknown-top-level-key",
        'colour = "blue"\n' + EGRESS,
        "colour",
        "unknown key (check the spelling; `fixedip config example` lists every key)",
    ),
    (
        "typo-in-nested-key",
        EGRESS + '[listen]\nhtp = "127.0.0.1:3128"\n',
        "listen.htp",
        "unknown key",
    ),
    (
        "missing-egress-section",
        '[listen]\nhttp = "127.0.0.1:3128"\n',
        "egress",
        "required key is missing",
    ),
    ("missing-egress-ips", "[egress]\n", "egress.ips", "required key is missing"),
    ("empty-egress-ips", "[egress]\nips = []\n", "egress.ips", "expected at least 1 entry"),
    (
        "egress-ips-not-an-array",
        '[egress]\nips = "127.0.0.10"\n',
        "egress.ips",
        'expected an array, got "127.0.0.10"',
    ),
    (
        "bad-ip-in-egress-ips",
        '[egress]\nips = ["127.0.0.10", "127.0.0.300"]\n',
        "egress.ips[1].bind",
        'expected an IPv4 or IPv6 address such as "203.0.113.7", got "127.0.0.300"',
    ),
    (
        "bad-public-ip-in-egress-table",
        '[egress]\nips = [{ bind = "10.0.1.5", public = "eip-1" }]\n',
        "egress.ips[0].public",
        'got "eip-1"',
    ),
    (
        "egress-entry-neither-string-nor-table",
        "[egress]\nips = [10]\n",
        "egress.ips[0]",
        'or a table { bind = "10.0.1.5", public = "203.0.113.7" }',
    ),
    (
        "duplicate-egress-ip",
        '[egress]\nips = ["127.0.0.10", "127.0.0.11", "127.0.0.10"]\n',
        "egress.ips",
        "127.0.0.10 is listed twice (entries 0 and 2)",
    ),
    (
        "duplicate-egress-ip-as-table",
        '[egress]\nips = ["127.0.0.10", { bind = "127.0.0.10", public = "203.0.113.7" }]\n',
        "egress.ips",
        "127.0.0.10 is listed twice",
    ),
    (
        "bad-strategy",
        EGRESS + 'strategy = "random"\n',
        "egress.strategy",
        "expected 'pinned', 'round-robin' or 'failover', got \"random\"",
    ),
    (
        "listen-without-port",
        EGRESS + '[listen]\nhttp = "127.0.0.1"\n',
        "listen.http",
        'expected "address:port" with a numeric IP address, e.g. "127.0.0.1:3128" '
        'or "[::1]:3128", got "127.0.0.1"',
    ),
    (
        "listen-hostname-instead-of-ip",
        EGRESS + '[listen]\nsocks = "localhost:1080"\n',
        "listen.socks",
        'with a numeric IP address, e.g. "127.0.0.1:3128" or "[::1]:3128", got "localhost:1080"',
    ),
    (
        "listen-port-70000",
        EGRESS + '[listen]\nadmin = "127.0.0.1:70000"\n',
        "listen.admin",
        'port in "127.0.0.1:70000" must be between 0 (any free port) and 65535',
    ),
    (
        "listen-as-number",
        EGRESS + "[listen]\nhttp = 3128\n",
        "listen.http",
        'expected a string "address:port"',
    ),
    (
        "listen-ipv6-without-closing-bracket",
        EGRESS + '[listen]\nhttp = "[::1:3128"\n',
        "listen.http",
        'got "[::1:3128"',
    ),
    (
        "two-listeners-on-one-port",
        EGRESS + '[listen]\nhttp = "127.0.0.1:3128"\nsocks = "127.0.0.1:3128"\n',
        "listen",
        "http and socks both use 127.0.0.1:3128: give each listener its own port",
    ),
    (
        "every-proxy-listener-off",
        EGRESS + '[listen]\nhttp = ""\nsocks = ""\n',
        "listen",
        "set at least one of http or socks",
    ),
    (
        "token-hash-is-the-raw-token",
        EGRESS + '[[clients]]\nname = "billing"\ntoken_hash = "tok-billing-s3cret"\n',
        "clients[0].token_hash",
        "expected the output of `fixedip token hash` (scrypt$...); "
        "never put the token itself in the file",
    ),
    (
        "raw-token-inside-a-rotation-list",
        EGRESS
        + '[[clients]]\nname = "billing"\n'
        + f'token_hash = ["{token_hash("billing")}", "tok-new"]\n',
        "clients[0].token_hash",
        "never put the token itself in the file",
    ),
    (
        "truncated-token-hash",
        EGRESS + f'[[clients]]\nname = "billing"\ntoken_hash = "{token_hash("billing")[:-5]}"\n',
        "clients[0].token_hash",
        "expected the output of `fixedip token hash`",
    ),
    (
        "empty-token-hash-list",
        EGRESS + '[[clients]]\nname = "billing"\ntoken_hash = []\n',
        "clients[0].token_hash",
        "expected a hash from `fixedip token hash`, or a list of them",
    ),
    (
        "client-without-token-hash",
        EGRESS + '[[clients]]\nname = "billing"\n',
        "clients[0].token_hash",
        "required key is missing",
    ),
    (
        "allow-rule-without-port",
        EGRESS + client('allow = ["api.vendor.example:443", "api.stripe.com"]'),
        "clients[0].allow",
        "rule 2 ('api.stripe.com'): 'api.stripe.com' has no port: write host:port, "
        "e.g. api.stripe.com:443 or api.stripe.com:*",
    ),
    (
        "allow-rule-with-bad-cidr",
        EGRESS + client('allow = ["10.0.0.0/33:443"]'),
        "clients[0].allow",
        "rule 1 ('10.0.0.0/33:443'): '10.0.0.0/33:443': '10.0.0.0/33' is not a valid "
        "IPv4 address or network",
    ),
    (
        "deny-rule-with-host-bits-set",
        EGRESS + client('deny = ["10.0.0.1/8:*"]'),
        "clients[0].deny",
        "10.0.0.1/8 has host bits set: write the network address, e.g. 10.0.0.0/8",
    ),
    (
        "client-name-with-colon",
        EGRESS + client(name="bill:ing"),
        "clients[0].name",
        "(it is the user name in Proxy-Authorization, so no ':')",
    ),
    (
        "duplicate-client-names",
        EGRESS + client() + client(name="other") + client(),
        "clients[2].name",
        "'billing' is already the name of clients[0]; client names must be unique",
    ),
    (
        "client-egress-not-in-pool",
        '[egress]\nips = ["127.0.0.10", "127.0.0.11"]\n' + client('egress = "127.0.0.12"'),
        "clients[0].egress",
        "127.0.0.12 is not one of egress.ips (127.0.0.10, 127.0.0.11)",
    ),
    (
        "client-egress-not-an-ip",
        EGRESS + client('egress = "eth0"'),
        "clients[0].egress",
        'expected an IPv4 or IPv6 address such as "203.0.113.7", got "eth0"',
    ),
    (
        "source-cidr-with-host-bits",
        EGRESS + client('source_cidrs = ["10.1.2.3/8"]'),
        "clients[0].source_cidrs[0]",
        '"10.1.2.3/8" has host bits set: write the network address, "10.0.0.0/8"',
    ),
    (
        "connect-port-zero",
        EGRESS + client("connect_ports = [443, 0]"),
        "clients[0].connect_ports[1]",
        "expected a number greater than or equal to 1, got 0",
    ),
    (
        "negative-timeout",
        EGRESS + "[timeouts]\nconnect_s = -1\n",
        "timeouts.connect_s",
        "expected a number greater than 0, got -1",
    ),
    (
        "timeout-as-boolean",
        EGRESS + "[timeouts]\nidle_s = true\n",
        "timeouts.idle_s",
        "expected a valid number, got true",
    ),
    (
        "limit-as-string",
        EGRESS + '[limits]\nmax_connections = "100"\n',
        "limits.max_connections",
        'expected a valid integer, got "100"',
    ),
    (
        "section-that-is-not-a-table",
        "egress = 1\n",
        "egress",
        "expected a table, got 1",
    ),
    (
        "tls-without-key",
        EGRESS + '[tls]\ncert = "/etc/fixedip/tls/fullchain.pem"\n',
        "tls.key",
        "required key is missing",
    ),
    (
        "ingress-without-routes",
        EGRESS + '[ingress]\nlisten = "0.0.0.0:8443"\nspool = "spool.db"\n',
        "ingress.routes",
        "required key is missing",
    ),
    (
        "routes-bad-base-url",
        EGRESS + '[[routes]]\nname = "stripe"\nbase_url = "api.stripe.com"\n',
        "routes[0].base_url",
        'expected "https://host[:port][/prefix]"',
    ),
    (
        "destinations-bad-rate",
        EGRESS + '[[destinations]]\nmatch = "api.vendor.example"\nrate = "fast"\n',
        "destinations[0].rate",
        'rate "fast" is not understood: write a positive number per second or per minute',
    ),
    (
        "destinations-canary-scheme",
        EGRESS + '[[destinations]]\nmatch = "api.vendor.example"\ncanary = { url = "ftp://x/" }\n',
        "destinations[0].canary",
        "http",
    ),
    (
        "destinations-network-match",
        EGRESS + '[[destinations]]\nmatch = "203.0.113.0/24"\n',
        "destinations[0].match",
        "expected a host name, *.domain, * or one IP address, not a network",
    ),
    (
        "destinations-bad-preset",
        EGRESS + '[[destinations]]\nmatch = "api.vendor.example"\nsanitize = "paranoid"\n',
        "destinations[0].sanitize",
        "expected 'standard', 'strict' or 'allowlist'",
    ),
    (
        "fleet-without-member",
        EGRESS + '[fleet]\nredis = "redis://127.0.0.1:6379/0"\n',
        "fleet.member",
        "required key is missing",
    ),
    (
        "listen-https-without-tls",
        EGRESS + '[listen]\nhttps = "0.0.0.0:3129"\n',
        "listen.https",
        "the TLS listener needs a [tls] section with cert and key",
    ),
    (
        "https-and-http-on-one-port",
        EGRESS + '[listen]\nhttp = "127.0.0.1:3128"\nhttps = "127.0.0.1:3128"\n'
        '[tls]\ncert = "c.pem"\nkey = "k.pem"\n',
        "listen",
        "http and https both use 127.0.0.1:3128: give each listener its own port",
    ),
    (
        "https-port-zero-with-workers",
        EGRESS + '[server]\nworkers = 2\n[listen]\nhttp = "127.0.0.1:3128"\n'
        'socks = ""\nadmin = ""\nhttps = "127.0.0.1:0"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n',
        "listen.https",
        "port 0 cannot be shared by 2 workers",
    ),
    (
        "dns-server-port-zero",
        EGRESS + '[dns]\nservers = ["127.0.0.1:53", "127.0.0.1:0"]\n',
        "dns.servers[1]",
        "127.0.0.1:0: a DNS server needs a port, e.g. 53",
    ),
    (
        "dns-server-without-port",
        EGRESS + '[dns]\nservers = ["127.0.0.1"]\n',
        "dns.servers[0]",
        'got "127.0.0.1"',
    ),
    (
        "guard-cidr-not-a-network",
        EGRESS + '[guard]\nallow_cidrs = ["loopback"]\n',
        "guard.allow_cidrs[0]",
        'expected an address or network in CIDR form such as "203.0.113.0/24", got "loopback"',
    ),
    (
        "guard-cidr-not-a-string",
        EGRESS + "[guard]\nallow_cidrs = [true]\n",
        "guard.allow_cidrs[0]",
        "expected an address or network in CIDR form",
    ),
    (
        "egress-ip-a-number",
        "[egress]\nips = [{ bind = 2130706442 }]\n",
        "egress.ips[0].bind",
        "expected an IPv4 or IPv6 address",
    ),
    (
        "bad-log-level",
        EGRESS + '[log]\nlevel = "loud"\n',
        "log.level",
        "expected 'debug', 'info', 'warning' or 'error', got \"loud\"",
    ),
    (
        "internal-source-key",
        'source = "elsewhere.toml"\n' + EGRESS,
        "source",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_file_is_refused_naming_file_key_and_what_was_expected(
    text: str, key: str, expected: str
) -> None:
    message = error_of(text)
    assert message.startswith(f"{SOURCE}: {key}: ")
    assert expected in message


def test_toml_syntax_error_names_line_and_column() -> None:
    message = error_of(EGRESS + "[listen\nhttp = 1\n")
    assert message.startswith(f"{SOURCE}: not valid TOML: ")
    assert "(at line 3, column 8)" in message


def test_toml_syntax_error_in_a_value_names_its_line() -> None:
    message = error_of('[egress]\nips = ["127.0.0.10" "127.0.0.11"]\n')
    assert message.startswith(f"{SOURCE}: not valid TOML: ")
    assert "(at line 2, column 21)" in message


def test_each_problem_is_reported_once_on_its_own_line() -> None:
    message = error_of(EGRESS + "[timeouts]\nconnect_s = -1\nidle_s = 0\n")
    assert message.splitlines() == [
        f"{SOURCE}: timeouts.connect_s: expected a number greater than 0, got -1",
        f"{SOURCE}: timeouts.idle_s: expected a number greater than 0, got 0",
    ]


# --- files on disk ---------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="^" + str(path) + ": no such file$"):
        load(path)


def test_directory_instead_of_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, expected a TOML file"


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(EGRESS.encode() + b'# caf\xe9\n[log]\nflow = "-"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: not UTF-8 text"


def test_errors_in_a_loaded_file_name_its_path(tmp_path: Path) -> None:
    path = tmp_path / "fixedip.toml"
    path.write_text(EGRESS + 'strategy = "random"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: egress.strategy: expected 'pinned'")


def test_loaded_file_records_its_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "fixedip.toml"
    path.write_text(EGRESS)
    assert load(path).source == str(path)


# --- good files ------------------------------------------------------------------------


def test_embedded_default_is_the_offline_demo() -> None:
    config = load(None)
    assert config.source == EMBEDDED_DEFAULT
    assert str(config.demo.echo) == "127.0.0.1:8080"
    assert [str(ip.bind) for ip in config.egress.ips] == ["127.0.0.10"]
    for endpoint in (config.listen.http, config.listen.socks, config.listen.admin):
        assert endpoint is not None
        assert str(endpoint.host) == "127.0.0.1"


def test_embedded_default_demo_client_accepts_the_token_demo() -> None:
    demo = load(None).client("demo")
    assert demo is not None
    assert demo.allow == ["127.0.0.1:8080"]
    assert verify_token("demo", demo.token_hash[0])
    assert not verify_token("not-demo", demo.token_hash[0])


def test_example_file_parses() -> None:
    config = parse(embedded_text("example.toml"), "example.toml")
    assert [str(ip.bind) for ip in config.egress.ips] == ["127.0.0.10", "127.0.0.11"]
    assert [c.name for c in config.clients] == ["billing"]
    assert config.demo.echo is None


def test_only_egress_is_required_and_everything_else_has_defaults() -> None:
    config = parse(EGRESS, SOURCE)
    assert str(config.listen.http) == "127.0.0.1:3128"
    assert str(config.listen.socks) == "127.0.0.1:1080"
    assert str(config.listen.admin) == "127.0.0.1:9090"
    assert config.egress.strategy == "round-robin"
    assert config.dns.servers == []
    assert config.log.flow == "flow.jsonl"
    assert config.timeouts.connect_s == 10
    assert config.limits.max_connections == 10_000
    assert config.clients == []
    assert config.demo.echo is None


def test_empty_flow_value_turns_the_flow_log_off() -> None:
    assert parse(EGRESS, SOURCE).log.flow_target == "flow.jsonl"
    assert parse(EGRESS + '[log]\nflow = "-"\n', SOURCE).log.flow_target == "-"
    assert parse(EGRESS + '[log]\nflow = ""\n', SOURCE).log.flow_target is None


def test_empty_listen_value_turns_that_listener_off() -> None:
    config = parse(EGRESS + '[listen]\nsocks = ""\nadmin = ""\n', SOURCE)
    assert str(config.listen.http) == "127.0.0.1:3128"
    assert config.listen.socks is None
    assert config.listen.admin is None


def test_listeners_may_all_ask_for_port_zero() -> None:
    text = EGRESS + '[listen]\nhttp = "127.0.0.1:0"\nsocks = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
    assert parse(text, SOURCE).listen.http is not None


def test_ipv6_listen_endpoint() -> None:
    config = parse(EGRESS + '[listen]\nhttp = "[::1]:3128"\n', SOURCE)
    assert config.listen.http is not None
    assert config.listen.http.host == ipaddress.ip_address("::1")
    assert str(config.listen.http) == "[::1]:3128"


def test_egress_entries_may_be_bind_public_tables() -> None:
    text = (
        '[egress]\nips = ["127.0.0.10", { bind = "10.0.1.5", public = "203.0.113.7" }]\n'
        + client('egress = "203.0.113.7"')
    )
    config = parse(text, SOURCE)
    plain, natted = config.egress.ips
    assert plain.seen_as == ipaddress.ip_address("127.0.0.10")
    assert natted.bind == ipaddress.ip_address("10.0.1.5")
    assert natted.seen_as == ipaddress.ip_address("203.0.113.7")
    assert config.clients[0].egress == ipaddress.ip_address("203.0.113.7")


def test_token_hash_may_be_a_rotation_list() -> None:
    old, new = token_hash("billing"), token_hash("other")
    config = parse(
        EGRESS + f'[[clients]]\nname = "billing"\ntoken_hash = ["{old}", "{new}"]\n', "x"
    )
    assert config.clients[0].token_hash == [old, new]


def test_single_token_hash_becomes_a_list_of_one() -> None:
    assert parse(EGRESS + client(), SOURCE).clients[0].token_hash == [token_hash("billing")]


def test_whole_numbers_are_accepted_for_seconds() -> None:
    assert parse(EGRESS + "[timeouts]\nconnect_s = 5\n", SOURCE).timeouts.connect_s == 5.0


def test_client_lookup_by_name() -> None:
    config = parse(EGRESS + client() + client(name="other"), SOURCE)
    other = config.client("other")
    assert other is not None
    assert other.name == "other"
    assert config.client("nobody") is None


def test_config_is_frozen() -> None:
    config = parse(EGRESS + client(), SOURCE)
    with pytest.raises(ValidationError):
        config.egress = config.egress  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.timeouts.connect_s = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.clients[0].name = "root"  # type: ignore[misc]


def test_equal_sections_compare_equal_whatever_the_source() -> None:
    assert parse(EGRESS, "a").listen == parse(EGRESS, "b").listen


def test_redacted_never_contains_a_full_hash() -> None:
    old, new = token_hash("billing"), token_hash("other")
    config = parse(
        EGRESS + f'[[clients]]\nname = "billing"\ntoken_hash = ["{old}", "{new}"]\n', "x"
    )
    text = json.dumps(redacted(config), ensure_ascii=False)
    for stored in (old, new):
        salt, digest = stored.split("$")[4:]
        assert stored not in text
        assert salt not in text
        assert digest not in text
    assert redacted(config)["clients"][0]["token_hash"] == [
        f"scrypt$14$8$1$…{old[-6:]}",
        f"scrypt$14$8$1$…{new[-6:]}",
    ]


def test_redacted_is_plain_data_without_the_source_or_an_unused_demo() -> None:
    data = redacted(parse(EGRESS + '[listen]\nadmin = ""\n', SOURCE))
    assert "source" not in data
    assert "demo" not in data
    assert data["listen"] == {
        "http": "127.0.0.1:3128",
        "socks": "127.0.0.1:1080",
        "admin": "",
        "https": "",
    }
    assert data["egress"]["ips"] == [{"bind": "127.0.0.10"}]
    json.dumps(data)


def test_redacted_embedded_default_keeps_the_demo_echo() -> None:
    assert redacted(load(None))["demo"] == {"echo": "127.0.0.1:8080"}


# --- docs/configuration.md: every example is a valid file (or part of one) ---------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
DOC_EGRESS = '[egress]\nips = [{ bind = "10.0.1.5", public = "203.0.113.7" }]\n'


def doc_examples() -> list[str]:
    blocks = re.findall(r"^( *)```toml\n(.*?)^\1```$", DOCS.read_text(), re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in blocks]


def test_docs_have_toml_examples() -> None:
    assert len(doc_examples()) >= 10


@pytest.mark.parametrize("example", doc_examples())
def test_docs_example_loads(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in re.findall(r'"env:([A-Z_]+)"', example):  # secrets the example names
        monkeypatch.setenv(name, "example-secret")
    text = example if re.search(r"^\[egress\]", example, re.MULTILINE) else DOC_EGRESS + example
    parse(text, "docs/configuration.md")


def test_docs_show_the_embedded_default_as_it_is() -> None:
    (shown,) = [e for e in doc_examples() if "[demo]" in e]
    assert redacted(parse(shown, "docs")) == redacted(load(None))
