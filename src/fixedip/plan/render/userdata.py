"""The gateway VM's first-boot script (EC2 user-data), shared by Terraform and CloudFormation.

It installs fixedip from the package index into a venv, waits until the Elastic IPs are
associated (the instance metadata lists each public IP with the private address it is
1:1-NATed onto), creates a TLS certificate for those addresses, writes
/etc/fixedip/fixedip.toml with `listen.https` and `[tls]`, and starts fixedip as a
hardened systemd service. The plain listeners stay on loopback.

A fleet member (`fixedip-ha`) also lists each floating Elastic IP in egress.ips, paired
with its spare private address (EIP i with address i, as `[fleet.aws]` associates them);
fixedip uses such a pair only while that EIP is associated here. The metadata may
already list a floating EIP (a reboot): it is not counted as one of the member's own.

The script is written once with `@@NAME@@` placeholders; `for_terraform` and
`for_cloudformation` turn them into `${...}` interpolations of each language. The shell
code itself never uses `${`, so neither language needs to escape anything in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fixedip.plan.render import hcl

CONFIG_PATH = "/etc/fixedip/fixedip.toml"
TLS_DIR = "/etc/fixedip/tls"
HTTPS_PORT = 3129
# Allow rules and client names the bootstrap accepts: no quotes, no shell metacharacters.
ALLOW_PATTERN = r"^[A-Za-z0-9*.:/_ \[\]-]+$"
TOKEN_HASH_PATTERN = r"^(scrypt\$[A-Za-z0-9$_-]+)?$"
CLIENT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")

_HEAD = """\
#!/bin/bash
# fixedip gateway bootstrap (rendered by `fixedip render`): installs fixedip, writes
# /etc/fixedip/fixedip.toml and a TLS certificate, starts fixedip.service.
set -euo pipefail
set -f   # allow rules contain '*': no glob expansion anywhere below
NAME='@@NAME@@'
REGION='@@REGION@@'
TLS_NAME='@@TLS_NAME@@'
EXPECTED_IPS='@@IPS@@'
CLIENT_NAME='@@CLIENT_NAME@@'
CLIENT_TOKEN_HASH='@@CLIENT_TOKEN_HASH@@'
ALLOW='@@ALLOW@@'
FIXEDIP_VERSION='@@FIXEDIP_VERSION@@'
"""

# Three lists in the same order: floating EIP i (allocation id, public IP) goes to spare
# private address i, here and in [fleet.aws].
_FLOATING = """\
FLOATING_PRIVATE_IPS='@@FLOATING_PRIVATE_IPS@@'
FLOATING_EIPS='@@FLOATING_EIPS@@'
FLOATING_PUBLIC_IPS='@@FLOATING_PUBLIC_IPS@@'
"""

_NOT_FLOATING = """\
FLOATING_PRIVATE_IPS=''
FLOATING_PUBLIC_IPS=''
"""

_BODY = """\

dnf install -y python3.11 python3.11-pip
id fixedip >/dev/null 2>&1 \\
  || useradd --system --home-dir /var/lib/fixedip --shell /sbin/nologin fixedip
python3.11 -m venv /opt/fixedip
/opt/fixedip/bin/pip install --quiet "fixedip[server]==$FIXEDIP_VERSION"

# Instance metadata (IMDSv2). Each Elastic IP appears under ipv4-associations/ with the
# private address it is NATed onto; wait (at most 10 minutes) until all are there.
imds() {
  local token
  token=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" \\
    http://169.254.169.254/latest/api/token)
  curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}
listed() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }
# "public private" per Elastic IP of this instance's own; a floating EIP (or anything on
# a spare address) is the fleet's, even when a reboot finds it associated here.
own_eips() {
  local public private
  for public in $(imds "network/interfaces/macs/$MAC/ipv4-associations/" || true); do
    listed "$public" "$FLOATING_PUBLIC_IPS" && continue
    private=$(imds "network/interfaces/macs/$MAC/ipv4-associations/$public") || continue
    listed "$private" "$FLOATING_PRIVATE_IPS" && continue
    echo "$public $private"
  done
}
MAC=$(imds mac)
INSTANCE_ID=$(imds instance-id)
OWN=""
for attempt in $(seq 1 120); do
  OWN=$(own_eips)
  [ "$(printf '%s\\n' "$OWN" | grep -c .)" -ge "$EXPECTED_IPS" ] && break
  echo "fixedip bootstrap: waiting for $EXPECTED_IPS Elastic IP(s), attempt $attempt"
  sleep 5
done
[ -n "$OWN" ] || { echo "fixedip bootstrap: no Elastic IP associated" >&2; exit 1; }

EGRESS=""
CERT_IPS=""
while read -r public private; do
  EGRESS="$EGRESS{ bind = \\"$private\\", public = \\"$public\\" }, "
  CERT_IPS="$CERT_IPS --ip $public --ip $private"
done <<< "$OWN"
# Floating EIP i leaves from spare address i while this member holds it (fixedip withholds
# the pair otherwise); clients may reach the fleet through any floating IP.
set -- $FLOATING_PRIVATE_IPS
for public in $FLOATING_PUBLIC_IPS; do
  [ "$#" -gt 0 ] || break
  EGRESS="$EGRESS{ bind = \\"$1\\", public = \\"$public\\" }, "
  CERT_IPS="$CERT_IPS --ip $public"
  shift
done
ALLOW_TOML=""
for rule in $ALLOW; do ALLOW_TOML="$ALLOW_TOML\\"$rule\\", "; done

install -d -m 0750 -o root -g fixedip /etc/fixedip
install -d -m 0750 -o fixedip -g fixedip /var/lib/fixedip
# A private CA and a server certificate for the TLS listener; clients need ca.pem.
/opt/fixedip/bin/fixedip tls selfsigned --name "$TLS_NAME" $CERT_IPS --out /etc/fixedip/tls
chgrp -R fixedip /etc/fixedip/tls
chmod -R g+rX,o-rwx /etc/fixedip/tls
# The CA key signs renewals only; the gateway process never needs it.
chgrp root /etc/fixedip/tls/ca-key.pem
chmod 0600 /etc/fixedip/tls/ca-key.pem
# Publish the CA certificate (public) for the functions: /fixedip/NAME/ca-pem.
aws ssm put-parameter --region "$REGION" --name "/fixedip/$NAME/ca-pem" --type String \\
  --overwrite --value "file:///etc/fixedip/tls/ca.pem" \\
  || echo "fixedip bootstrap: could not publish the CA certificate to SSM" >&2

umask 027
cat > /etc/fixedip/fixedip.toml <<EOF
# Written on first boot by the fixedip bootstrap; edit, then: systemctl reload fixedip
[listen]
https = "0.0.0.0:3129"
http = "127.0.0.1:3128"
socks = "127.0.0.1:1080"
admin = "127.0.0.1:9090"

[tls]
cert = "/etc/fixedip/tls/fullchain.pem"
key = "/etc/fixedip/tls/privkey.pem"

[egress]
ips = [$EGRESS]

[log]
flow = "-"
EOF
if [ -n "$CLIENT_TOKEN_HASH" ]; then
  cat >> /etc/fixedip/fixedip.toml <<EOF

[[clients]]
name = "$CLIENT_NAME"
token_hash = "$CLIENT_TOKEN_HASH"
source_cidrs = ["0.0.0.0/0"]
allow = [$ALLOW_TOML]
EOF
fi
"""

_FLEET = """\

# The fleet: shared state in Redis (TLS + AUTH), floating Elastic IPs held by one member
# at a time, associated with this gateway's spare private address while it holds one.
REDIS_HOST='@@REDIS_HOST@@'
REDIS_SECRET='@@REDIS_SECRET@@'
aws secretsmanager get-secret-value --region "$REGION" --secret-id "$REDIS_SECRET" \\
  --query SecretString --output text > /etc/fixedip/redis-password
chgrp fixedip /etc/fixedip/redis-password
FLOATING_TOML=""
for eip in $FLOATING_EIPS; do FLOATING_TOML="$FLOATING_TOML\\"$eip\\", "; done
PRIVATE_TOML=""
for ip in $FLOATING_PRIVATE_IPS; do PRIVATE_TOML="$PRIVATE_TOML\\"$ip\\", "; done
cat >> /etc/fixedip/fixedip.toml <<EOF

[fleet]
redis = "rediss://$REDIS_HOST:6379/0"
member = "$INSTANCE_ID"
password = "file:/etc/fixedip/redis-password"

[fleet.aws]
region = "$REGION"
instance_id = "$INSTANCE_ID"
private_ips = [$PRIVATE_TOML]
floating_eips = [$FLOATING_TOML]
EOF
"""

_TAIL = """\
chgrp fixedip /etc/fixedip/fixedip.toml

cat > /etc/systemd/system/fixedip.service <<'EOF'
[Unit]
Description=fixedip egress gateway
After=network-online.target
Wants=network-online.target

[Service]
User=fixedip
Group=fixedip
ExecStart=/opt/fixedip/bin/fixedip serve --config /etc/fixedip/fixedip.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/fixedip
WorkingDirectory=/var/lib/fixedip

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now fixedip.service
"""


def script(fleet: bool = False) -> str:
    """The bootstrap with `@@NAME@@` placeholders (see `placeholders`)."""
    text = _HEAD + (_FLOATING if fleet else _NOT_FLOATING) + _BODY
    text += (_FLEET if fleet else "") + _TAIL
    assert "${" not in text, "the bootstrap must not use ${ (both templating languages own it)"
    return text


def placeholders(fleet: bool = False) -> set[str]:
    return set(_PLACEHOLDER.findall(script(fleet)))


def for_terraform(values: Mapping[str, str | hcl.Expr]) -> hcl.Heredoc:
    """The script as a heredoc. A `str` value is inserted literally, an `Expr` (such as
    `var.region`) becomes an interpolation."""
    text = hcl.literal(_script_for(values))

    def value(match: re.Match[str]) -> str:
        item = values[match.group(1)]
        return "${" + item.text + "}" if isinstance(item, hcl.Expr) else hcl.literal(item)

    return hcl.Heredoc(_PLACEHOLDER.sub(value, text))


def for_cloudformation(values: Mapping[str, Any]) -> dict[str, Any]:
    """`Fn::Base64` of `Fn::Sub`. A `str` value is inserted literally, an intrinsic
    function (`{"Ref": ...}`) becomes a `Fn::Sub` variable."""
    text = _script_for(values)
    variables: dict[str, Any] = {}

    def value(match: re.Match[str]) -> str:
        item = values[match.group(1)]
        if isinstance(item, str):
            return item.replace("${", "${!")
        name = match.group(1).title().replace("_", "")
        variables[name] = item
        return "${" + name + "}"

    text = _PLACEHOLDER.sub(value, text)
    return {"Fn::Base64": {"Fn::Sub": [text, dict(sorted(variables.items()))]}}


def _script_for(values: Mapping[str, Any]) -> str:
    fleet = "REDIS_HOST" in values
    missing = placeholders(fleet) - set(values)
    if missing:
        raise KeyError(f"bootstrap placeholders without a value: {sorted(missing)}")
    return script(fleet)
