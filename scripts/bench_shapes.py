"""How fast the shapes dataset draws clips (the training loop renders every item on the fly).

    python scripts/bench_shapes.py            # render() at three clip sizes, and one dataset item

Times `render` (numpy, anti-aliased) on the first clips of the training split and a full
`ShapesDataset.__getitem__` (spec + render + caption + tensor) at the CPU preset size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mvdit.data.shapes import ShapesDataset, render


def per_call_ms(fn, calls: int) -> float:
    fn(0)  # warm-up
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--calls", type=int, default=200, help="clips per measurement (fewer for the largest size)"
    )
    args = ap.parse_args()
    ds = ShapesDataset(size=args.calls)
    specs = [ds.spec(i)[0] for i in range(args.calls)]
    print("median wall time per clip (ms)")
    for frames, height, width, calls in (
        (9, 32, 32, args.calls),
        (17, 64, 64, args.calls),
        (49, 384, 512, max(1, args.calls // 10)),
    ):
        ms = per_call_ms(
            lambda i, size=(frames, height, width): render(specs[i], *size, 24.0), calls
        )
        print(f"  render {frames}x{height}x{width}: {ms:8.2f}")
    item = ShapesDataset(size=args.calls, frames=9)
    print(
        f"  ShapesDataset item 9x32x32 (spec + render + caption + tensor): {per_call_ms(item.__getitem__, args.calls):.2f}"
    )


if __name__ == "__main__":
    main()
