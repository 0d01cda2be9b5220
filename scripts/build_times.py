"""Compile time of the test fixtures, each built alone: where a change made builds slower.

    python scripts/build_times.py --out now.json                  # every Keras 3 layer fixture
    python scripts/build_times.py --compare before.json --out now.json
    python scripts/build_times.py --glob 'models/*.keras' --top 10

Builds every fixture matched by ``--glob`` (under ``tests/fixtures/keras3``) with
``bridge.build`` for this CPU and records the seconds each took (failures count, as a build that
raises is still compile work). With ``--compare``, prints the fixtures whose time changed most
against an earlier run's JSON and both totals. Compile time is not asserted anywhere (timed
assertions are not tests): run this at a change's base and after it. 24c381e made one layer
(mish) compile in 7.3 s instead of 0.17 s and the default test suite run about twice as long;
5be8bf9 fixed it (the first 60 layer fixtures: 11.8 s at the base, 18.6 s, then 9.0 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import bridge

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keras3"


def build_times(pattern: str) -> dict[str, float]:
    """Seconds ``bridge.build`` takes on each fixture matching ``pattern``, in name order,
    after one untimed build (the process's first pays TVM's and LLVM's initialization)."""
    paths = sorted(FIXTURES.glob(pattern))
    times = {}
    for index, path in enumerate([*paths[:1], *paths]):
        started = time.perf_counter()
        # unsupported or malformed on purpose: its time still counts
        with contextlib.suppress(bridge.errors.BridgeError):
            bridge.build(path)
        if index:
            times[str(path.relative_to(FIXTURES))] = time.perf_counter() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glob", default="layers/*.keras", help="under tests/fixtures/keras3")
    parser.add_argument("--compare", type=Path, help="an earlier run's --out JSON")
    parser.add_argument("--out", type=Path, help="write {fixture: seconds} here")
    parser.add_argument("--top", type=int, default=15, help="rows printed")
    args = parser.parse_args()
    times = build_times(args.glob)
    if args.out:
        args.out.write_text(json.dumps(times, indent=1) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        shared = [k for k in times if k in before]
        rows = sorted(shared, key=lambda k: -abs(times[k] - before[k]))
        for key in rows[: args.top]:
            print(f"{before[key]:7.2f} s -> {times[key]:7.2f} s  {key}")
        total_before = sum(before[k] for k in shared)
        total_now = sum(times[k] for k in shared)
        print(f"total over {len(shared)} fixtures: {total_before:.1f} s -> {total_now:.1f} s")
    else:
        for key in sorted(times, key=lambda k: -times[k])[: args.top]:
            print(f"{times[key]:7.2f} s  {key}")
        print(f"total over {len(times)} fixtures: {sum(times.values()):.1f} s")


if __name__ == "__main__":
    main()
