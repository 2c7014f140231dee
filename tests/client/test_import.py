"""`import fixedip.client` stays light: standard library only, nothing heavy until used.

Behaviour, not timing: benchmarks/client_import.py measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys

THIRD_PARTY = (
    "requests",
    "httpx",
    "aiohttp",
    "urllib3",
    "botocore",
    "pydantic",
    "uvloop",
    "typer",
    "rich",
)
# Standard-library modules the SDK needs only when a feature is used, never at import.
LAZY = (
    "typing",
    "json",
    "ssl",
    "socket",
    "http.client",
    "logging",
    "asyncio",
    "ipaddress",
    "urllib.parse",
    "threading",
    "inspect",
    "functools",
    "random",
    "email.utils",
)


def modules_after(code: str) -> dict[str, list[str]]:
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print(json.dumps({'all': sorted(sys.modules), 'new': sorted(set(sys.modules) - before)}))"
    )
    # json is imported first so that it does not count as new; the test below checks
    # for it separately.
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    return json.loads(out.stdout)


def test_import_loads_no_third_party_module() -> None:
    seen = modules_after("import fixedip.client")
    loaded = [m for m in seen["all"] if m.split(".")[0] in THIRD_PARTY]
    assert loaded == []


def test_import_adds_only_standard_library_and_fixedip_modules() -> None:
    new = modules_after("import fixedip.client")["new"]
    foreign = [
        m
        for m in new
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "fixedip"
    ]
    assert foreign == []
    assert "fixedip.client" in new


def test_import_defers_heavy_standard_library_modules() -> None:
    probe = (
        "import sys\nimport fixedip.client\n"
        f"print(','.join(m for m in {LAZY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""


def test_the_fixedip_package_itself_imports_nothing() -> None:
    new = modules_after("import fixedip")["new"]
    assert new == ["fixedip"]


def test_using_the_proxy_settings_still_loads_no_third_party_module() -> None:
    code = (
        "import fixedip.client\n"
        "gw = fixedip.client.Gateway('http://billing:t@127.0.0.1:3128')\n"
        "gw.proxies; gw.env(); gw.urllib_opener()\n"
        "fixedip.client.sanitize_headers({'Via': 'x'})"
    )
    loaded = [m for m in modules_after(code)["all"] if m.split(".")[0] in THIRD_PARTY]
    assert loaded == []
