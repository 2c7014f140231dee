"""Coverage-guided fuzzing of the parsers and the config loader with atheris, time-bounded.

    python fuzz/run.py --seconds 60                         # every target, 60 s each
    python fuzz/run.py --seconds 300 --target http_request_head
    python fuzz/run.py --target socks5 --replay fuzz/crashes/socks5/crash-...

Each target runs in its own process (`atheris.Fuzz()` never returns): this script starts
`fuzz/run.py --child TARGET` per target, prints one summary line for each and exits 1 if
any target crashed. A crashing input lands in `fuzz/crashes/<target>/crash-<sha1>`; the
corpus a run grows is kept in `fuzz/work/<target>/` (not committed) so later runs start
from it, next to the committed seeds in `fuzz/corpus/<target>/`. The harnesses and their
invariants are in `fuzz/targets.py`; fuzz/README.md says how to replay a crash.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
TARGET_NAMES = ("http_request_head", "http_response", "socks5", "config_loader")
DICTIONARIES = {
    "http_request_head": "http.dict",
    "http_response": "http.dict",
    "config_loader": "toml.dict",
}
# Big enough for every limit the harness can reach (the small head limit is 1024 bytes,
# and the socks5 target repeats its input past the pending-bytes bound itself).
MAX_INPUT_BYTES = {"config_loader": 8192}
DEFAULT_MAX_INPUT_BYTES = 4096
PER_INPUT_TIMEOUT_S = 10
RSS_LIMIT_MB = 2048
# libFuzzer checks -max_total_time between inputs; allow for start-up and a slow input.
GRACE_S = 120

_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.MULTILINE)


def crash_dir(target: str) -> Path:
    return FUZZ_DIR / "crashes" / target


def work_dir(target: str) -> Path:
    return FUZZ_DIR / "work" / target


def run_child(target: str, seconds: int) -> None:
    """Fuzz one target in this process until libFuzzer stops it (never returns)."""
    import atheris

    sys.path.insert(0, str(FUZZ_DIR))
    with atheris.instrument_imports(include=["fixedip", "tomllib", "targets"]):
        import targets

    crash_dir(target).mkdir(parents=True, exist_ok=True)
    work_dir(target).mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-max_len={MAX_INPUT_BYTES.get(target, DEFAULT_MAX_INPUT_BYTES)}",
        f"-timeout={PER_INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={crash_dir(target)}/",
        "-print_final_stats=1",
    ]
    if target in DICTIONARIES:
        args.append(f"-dict={FUZZ_DIR / 'dicts' / DICTIONARIES[target]}")
    # New inputs are written to the first corpus directory only: the committed seeds
    # in the second stay as they are.
    args += [str(work_dir(target)), str(FUZZ_DIR / "corpus" / target)]
    atheris.Setup(args, targets.TARGETS[target])
    atheris.Fuzz()


@dataclass
class Outcome:
    target: str
    executions: int
    seconds: float
    coverage: str
    artifacts: list[Path]
    returncode: int | None
    log: Path

    @property
    def crashed(self) -> bool:
        return bool(self.artifacts) or self.returncode != 0

    def summary(self) -> str:
        rate = self.executions / self.seconds if self.seconds else 0.0
        line = (
            f"{self.target}: {self.executions} executions in {self.seconds:.0f} s "
            f"({rate:.0f}/s), {self.coverage}, {len(self.artifacts)} crash(es)"
        )
        if self.returncode is None:
            line += ", did not stop in time"
        elif self.returncode != 0 and not self.artifacts:
            line += f", exit status {self.returncode}"
        for artifact in self.artifacts:
            line += f"\n  {artifact.relative_to(FUZZ_DIR.parent)}"
        return line


def artifacts(target: str) -> set[Path]:
    directory = crash_dir(target)
    if not directory.is_dir():
        return set()
    return {path for path in directory.iterdir() if _ARTIFACT.match(path.name)}


def fuzz_target(target: str, seconds: int) -> Outcome:
    work_dir(target).mkdir(parents=True, exist_ok=True)
    log = FUZZ_DIR / "work" / f"{target}.log"
    before = artifacts(target)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", target]
    command += ["--seconds", str(seconds)]
    started = time.monotonic()
    returncode: int | None
    with log.open("w") as out:
        try:
            returncode = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + GRACE_S
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    executed = _EXECUTED.findall(text)
    progress = _PROGRESS.findall(text)
    executions = int(executed[-1]) if executed else int(progress[-1][0]) if progress else 0
    coverage = (
        f"cov {progress[-1][1]} ft {progress[-1][2]} corpus {progress[-1][3]}"
        if progress
        else "no coverage reported"
    )
    found = sorted(artifacts(target) - before)
    return Outcome(target, executions, elapsed, coverage, found, returncode, log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--target", choices=TARGET_NAMES, help="fuzz only this target")
    parser.add_argument(
        "--replay", type=Path, metavar="FILE", help="run --target once on FILE, no atheris"
    )
    parser.add_argument("--child", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    if args.replay:
        if not args.target:
            parser.error("--replay needs --target")
        sys.path.insert(0, str(FUZZ_DIR))
        import targets

        targets.TARGETS[args.target](args.replay.read_bytes())  # a broken invariant raises
        print(f"{args.target}: {args.replay} passes")
        return 0
    if args.child:
        # libFuzzer parses sys.argv itself: hand it only the program name.
        del sys.argv[1:]
        run_child(args.child, args.seconds)
        return 0

    failed = False
    for target in [args.target] if args.target else TARGET_NAMES:
        outcome = fuzz_target(target, args.seconds)
        print(outcome.summary(), flush=True)
        if outcome.crashed:
            failed = True
            tail = outcome.log.read_text(errors="replace").splitlines()[-40:]
            print("\n".join(f"  | {line}" for line in tail), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
