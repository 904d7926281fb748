"""Run tests again and again, and tally what failed: a flake shows once in N runs.

    python -m tests.loop --runs 5 [pytest arguments ...]   (``make test-loop``)

Each run is a separate pytest process (its own broker, as in CI); each run's output is
kept under ``--logs``. The tally lists every test that failed in any run, with the runs
it failed in; the exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)
SUMMARY = re.compile(r"^=+ (.*(?:passed|failed|error).*) =+$", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="how many runs (default 5)")
    parser.add_argument("--logs", type=Path, default=ROOT / ".loop-logs",
                        help="where each run's output goes (default .loop-logs/)")
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = pytest_args or ["tests/integration", "tests/e2e"]
    args.logs.mkdir(parents=True, exist_ok=True)
    failures: dict[str, list[int]] = defaultdict(list)
    failed_runs = 0
    for run in range(1, args.runs + 1):
        log_path = args.logs / f"run-{run}.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            code = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE",
                 *pytest_args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                check=False,
            ).returncode
        text = log_path.read_text(errors="replace")
        for test in FAILED.findall(text):
            failures[test].append(run)
        summary = SUMMARY.findall(text)
        failed_runs += code != 0
        print(f"run {run}/{args.runs}: {summary[-1] if summary else f'exit {code}'} "
              f"in {time.monotonic() - started:.0f} s ({log_path})", flush=True)
    print(f"\n{args.runs - failed_runs} of {args.runs} runs passed")
    for test, runs in sorted(failures.items()):
        print(f"  {test}: failed in run(s) {', '.join(map(str, runs))}")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
