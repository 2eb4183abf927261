#!/usr/bin/env python3
"""Summarise a py-spy raw profile (``py-spy record --format raw``, or benchmarks/pipeline.py
--profile): the functions with the most samples of their own, and with the most samples
including what they call, as percentages of all samples.

    python3 scripts/profile_summary.py PROFILE.txt [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import re


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.profile, encoding="utf-8") as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            own[frames[-1]] += n
            for frame in set(frames):
                within[frame] += n
    print(f"{total} samples")
    for title, counter in (("own", own), ("including callees", within)):
        print(f"--- {title}")
        for frame, n in counter.most_common(args.top):
            print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
