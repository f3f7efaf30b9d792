"""Start-up time of `llm <stage> --help` and `llm <stage> --cfg job`, two CLIs side by side, interleaved.

    git show <commit>:lightning_llm/cli.py > /tmp/cli_before.py
    .venv/bin/python bench/startup.py --before /tmp/cli_before.py --repeats 3

Prints the median CPU seconds (user+sys of the child, load-independent) and the median and best
wall seconds of each command for the CLI given with --before and for the current one."""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(command: list[str]) -> tuple[float, float]:
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, capture_output=True, cwd=ROOT, check=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="a copy of an older lightning_llm/cli.py")
    parser.add_argument("--stage", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clis = {"before": [sys.executable, args.before], "after": [sys.executable, "-m", "lightning_llm.cli"]}
    flags = {"--help": ["--help"], "--cfg job": ["--cfg", "job"]}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {(c, f): [] for c in clis for f in flags}
    for _ in range(args.repeats):
        for cli, command in clis.items():
            for flag, extra in flags.items():
                results[(cli, flag)].append(measure([*command, args.stage, *extra]))
    for flag in flags:
        cpu = {cli: statistics.median(c for c, _ in results[(cli, flag)]) for cli in clis}
        wall = {cli: [w for _, w in results[(cli, flag)]] for cli in clis}
        print(f"llm {args.stage} {flag}: CPU s before {cpu['before']:.2f}, after {cpu['after']:.2f} "
              f"({cpu['before'] / cpu['after']:.1f}x); wall median before {statistics.median(wall['before']):.2f}, "
              f"after {statistics.median(wall['after']):.2f}; best before {min(wall['before']):.2f}, "
              f"after {min(wall['after']):.2f}")


if __name__ == "__main__":
    main()
