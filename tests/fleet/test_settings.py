"""`[fleet]` and `[fleet.aws]`: bad values are refused naming file, key and what to write;
rediss:// and AUTH are accepted, and a password never shows in `fixedip config show`."""

from __future__ import annotations

import pytest

from fixedip.config import ConfigError, parse, redacted

EGRESS = '[egress]\nips = ["127.0.0.10"]\n'


def fleet(body: str) -> str:
    return EGRESS + "[fleet]\n" + body


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "gw.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ('redis = "http://10.0.1.9:6379"\nmember = "a"\n', "fleet.redis", '"redis://host:port/db"'),
        ('redis = "redis://:6379/0"\nmember = "a"\n', "fleet.redis", "no host"),
        ('redis = "redis://h:99999/0"\nmember = "a"\n', "fleet.redis", "port is not a number"),
        ('redis = "redis://h:6379/zero"\nmember = "a"\n', "fleet.redis", "must be a number"),
        ('redis = "redis://h/0"\nmember = "gw a"\n', "fleet.member", "this gateway's name"),
        ('redis = "redis://h/0"\n', "fleet.member", "required key is missing"),
        (
            'redis = "redis://h/0"\nmember = "a"\npassword = "hunter2"\n',
            "fleet.password",
            "env:NAME",
        ),
        (
            'redis = "redis://:pw@h/0"\nmember = "a"\npassword = "env:HOME"\n',
            "fleet",
            "the redis URL already holds one",
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\nca_file = "/etc/ssl/ca.pem"\n',
            "fleet",
            'only used with a "rediss://" URL',
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\ntimeout_ms = 0\n',
            "fleet.timeout_ms",
            "greater than or equal to 1",
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
            'floating_eips = ["eip-123"]\n',
            "fleet.aws.floating_eips",
            '"eipalloc-0abc1234"',
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "Ireland"\n',
            "fleet.aws.region",
            '"eu-west-1"',
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
            'instance_id = "web-1"\n',
            "fleet.aws.instance_id",
            "i-0abc12345678",
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
            'private_ips = ["10.0.1.20", "10.0.1.20"]\n',
            "fleet.aws.private_ips",
            "each floating EIP needs its own",
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
            'private_ips = ["10.0.1.20", "eni-1"]\n',
            "fleet.aws.private_ips[1]",
            "IPv4 or IPv6 address",
        ),
        (
            'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
            'private_ip = "10.0.1.20"\nprivate_ips = ["10.0.1.21"]\n',
            "fleet.aws",
            "keep one (private_ip = X is private_ips = [X])",
        ),
    ],
)
def test_bad_fleet_keys_are_refused_by_name(body: str, key: str, expected: str) -> None:
    message = error_of(fleet(body))
    assert message.startswith(f"gw.toml: {key}:"), message
    assert expected in message


def test_rediss_with_a_user_and_password_is_accepted_and_redacted() -> None:
    config = parse(fleet('redis = "rediss://app:s3cret@10.0.1.9:6380/2"\nmember = "gw-a"\n'), "x")
    assert config.fleet is not None
    url = config.fleet.url
    assert (url.tls, url.host, url.port, url.db) == (True, "10.0.1.9", 6380, 2)
    assert config.fleet.auth() == ("app", "s3cret")
    shown = redacted(config)["fleet"]["redis"]
    assert shown == "rediss://app:***@10.0.1.9:6380/2" and "s3cret" not in str(redacted(config))


def test_a_password_from_the_environment_is_read_for_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_REDIS_PASSWORD", "from-env")
    body = 'redis = "redis://10.0.1.9/0"\nmember = "gw-a"\npassword = "env:FLEET_REDIS_PASSWORD"\n'
    config = parse(fleet(body), "x")
    assert config.fleet is not None and config.fleet.auth() == (None, "from-env")


def test_floating_eips_need_a_region_and_take_allocation_ids() -> None:
    body = (
        'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n'
        'endpoint_url = "http://127.0.0.1:5000"\ninstance_id = "i-0123456789abcdef0"\n'
        'floating_eips = ["eipalloc-0abc1234"]\n'
    )
    config = parse(fleet(body), "x")
    assert config.fleet is not None and config.fleet.aws is not None
    assert config.fleet.aws.floating_eips == ["eipalloc-0abc1234"]


@pytest.mark.parametrize(
    ("keys", "addresses"),
    [
        ('private_ips = ["10.0.1.20", "10.0.1.21"]\n', ["10.0.1.20", "10.0.1.21"]),
        ('private_ip = "10.0.1.20"\n', ["10.0.1.20"]),  # the one-address form
        ("", []),  # the primary address: one floating EIP at most
    ],
)
def test_private_ips_say_where_a_members_floating_eips_go(keys: str, addresses: list[str]) -> None:
    body = 'redis = "redis://h/0"\nmember = "a"\n[fleet.aws]\nregion = "eu-west-1"\n' + keys
    config = parse(fleet(body), "x")
    assert config.fleet is not None and config.fleet.aws is not None
    assert [str(a) for a in config.fleet.aws.addresses] == addresses
