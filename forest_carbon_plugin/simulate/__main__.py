"""Command line: python -m forest_carbon_plugin.simulate --seed 7 --size-m 2000 --out DIR"""

from __future__ import annotations

import argparse
import sys
import time

from ..core.errors import ForestCarbonError
from .scene import simulate_scene
from .world import SceneConfig


class _Print:
    def __init__(self):
        self.last = -10

    def set_progress(self, percent):
        if percent - self.last >= 10 or percent >= 100:
            print(f"  {percent:5.1f}%", flush=True)
            self.last = percent

    def is_canceled(self):
        return False

    def info(self, message):
        print(message, flush=True)

    def warning(self, message):
        print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forest_carbon_plugin.simulate",
                                     description="Simulate a forest scene with ground truth.")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size-m", type=float, default=500.0, help="scene side in metres (rounded up to 60 m)")
    parser.add_argument("--pulse-density", type=float, default=10.0, help="LiDAR pulses per m²")
    parser.add_argument("--tile-m", type=float, default=250.0, help="LiDAR tile size in metres")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    config = SceneConfig(size_m=args.size_m, seed=args.seed, pulse_density=args.pulse_density,
                         tile_m=args.tile_m, workers=args.workers)
    start = time.perf_counter()
    try:
        manifest = simulate_scene(args.out, config, _Print())
    except ForestCarbonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"scene written to {args.out} in {time.perf_counter() - start:.1f} s: "
          f"{manifest['truth']['tree_count']:,} trees, {manifest['lidar']['points']:,} LiDAR points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
