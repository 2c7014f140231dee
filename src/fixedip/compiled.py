"""Whether the gateway's hot path runs compiled or as pure Python.

`scripts/compile` (run by `make run`, `make test` and `make bench`) builds the modules
below with mypyc into C extension modules beside their sources; Python then imports the
extension instead of the .py. They are the same type-checked code at about half the CPU
per request. Without a C compiler nothing is built and the .py modules run.

    python -m fixedip.compiled       the source paths mypyc builds, one per line
    python -m fixedip.compiled --c   the hand-written C sources, one per line
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

# Every module a proxied request runs through. A class that inherits from a compiled
# class must be compiled too: mypyc refuses interpreted subclasses.
HOT_MODULES = (
    "fixedip.proto.http1",
    "fixedip.gateway.http_proxy",
    "fixedip.gateway.session",
    "fixedip.gateway.socks",
    "fixedip.gateway.runtime",
    "fixedip.gateway.upstream",
    "fixedip.observe.flowlog",
    "fixedip.observe.metrics",
    "fixedip.ingress.observe",
    "fixedip.policy.auth",
    "fixedip.identity.pool",
    "fixedip.identity.health",
)
# Hand-written C for what measurement showed compiled Python still spends most on (the
# HTTP head path); built by the same script, each from the .c file of its name. Every
# one has a Python twin that runs where it was not built.
C_MODULES = ("fixedip.proto._heads",)
BUILT = HOT_MODULES + C_MODULES
SRC = Path(__file__).resolve().parent.parent
STAMP = SRC / "fixedip" / ".compiled"  # written by scripts/compile after a build


def compiled_modules() -> list[str]:
    """The hot modules Python would import as extension modules (without importing)."""
    found = []
    for name in BUILT:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def stale() -> str | None:
    """Why the compiled modules do not match the source, or None when they do (or when
    nothing is compiled). Compiled code assumes the shapes of everything it imports, so
    any source newer than the last build makes it stale."""
    built = compiled_modules()
    if not built:
        return None
    if not STAMP.exists():
        return f"{', '.join(built)} compiled, but {STAMP} is missing"
    sources = [*(SRC / "fixedip").rglob("*.py"), *(SRC / "fixedip").rglob("*.c")]
    newest = max(sources, key=lambda p: p.stat().st_mtime)
    if newest.stat().st_mtime > STAMP.stat().st_mtime:
        return f"{newest} changed after the hot path was compiled"
    return None


def describe() -> str:
    """One line for the start-up banner."""
    built = compiled_modules()
    why = stale()
    if why is not None:
        return f"hot path compiled but STALE ({why}): run `make compile`"
    if len(built) == len(BUILT):
        return "hot path compiled (mypyc and C)"
    if built:
        return f"hot path partly compiled ({len(built)} of {len(BUILT)} modules)"
    return "hot path in pure Python (`make compile`, with gcc and python3-dev, halves its CPU)"


if __name__ == "__main__":
    c = sys.argv[1:] == ["--c"]
    for name in C_MODULES if c else HOT_MODULES:
        sys.stdout.write(name.replace(".", "/") + (".c\n" if c else ".py\n"))
