#!/usr/bin/env python3
"""How long `import fixedip.client` takes, against `import json` measured in the same run.

Each sample is a fresh interpreter started with `-X importtime`; the figure is the
cumulative time of the top-level import, as CPython reports it (microseconds). The
two imports are sampled alternately, and the median of each is reported with their
ratio. The issue's bar is 15 ms for `import fixedip.client`.

Bytecode caches are written to a temporary PYTHONPYCACHEPREFIX (warmed first), so
fixedip is measured the way an installed package runs (pip writes .pyc files at
install time) and the way json always is. The same import with no bytecode cache at
all (every module compiled from source, as in a read-only bundle shipped without
.pyc files) is printed too, for information.

    .venv/bin/python benchmarks/client_import.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

BAR_MS = 15.0
_LINE = re.compile(r"^import time:\s+\d+\s+\|\s+(\d+)\s+\|\s(\S+)\s*$")


def import_us(python: str, module: str, env: dict[str, str]) -> int:
    """Cumulative microseconds of `import module` in a fresh interpreter."""
    out = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    for line in out.stderr.splitlines():
        match = _LINE.match(line)
        if match and match.group(2) == module:
            return int(match.group(1))
    raise RuntimeError(f"no importtime line for {module}:\n{out.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="samples per import (>= 5)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    args = parser.parse_args()
    runs = max(5, args.runs)

    with tempfile.TemporaryDirectory(prefix="fixedip-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for module in ("json", "fixedip.client"):  # warm the caches, unrecorded
            import_us(args.python, module, env)
        samples: dict[str, list[int]] = {"json": [], "fixedip.client": []}
        for _ in range(runs):
            for module in samples:
                samples[module].append(import_us(args.python, module, env))

    with tempfile.TemporaryDirectory(prefix="fixedip-nocache-") as empty:
        cold_env = {**env, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        uncached = [import_us(args.python, "fixedip.client", cold_env) for _ in range(runs)]

    json_ms = statistics.median(samples["json"]) / 1000
    sdk_ms = statistics.median(samples["fixedip.client"]) / 1000
    uncached_ms = statistics.median(uncached) / 1000
    verdict = "met" if sdk_ms <= BAR_MS else "MISSED"
    print(f"interpreter              {args.python}")
    print(f"samples                  {runs} fresh interpreters per import, median")
    print(f"import json              {json_ms:7.2f} ms  (baseline)")
    print(f"import fixedip.client    {sdk_ms:7.2f} ms  = {sdk_ms / json_ms:.2f} x json")
    print(f"  bar                    {BAR_MS:7.2f} ms  {verdict}")
    print(f"  without any .pyc       {uncached_ms:7.2f} ms  (compiled from source each time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
