"""How fast `pipeline synth` writes 1,000,000 rows over 8 hospitals (goal: under 20 s)."""

from __future__ import annotations

import tempfile
import time

from pipeline.synth import synthesize

ROWS, SITES, GOAL_S = 1_000_000, 8, 20.0


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        _, written = synthesize(out, sites=SITES, rows=ROWS, seed=0)
        seconds = time.perf_counter() - start
    sizes = sorted(s.rows for s in written)
    print(
        f"synth: {ROWS:,} rows over {SITES} sites in {seconds:.2f} s "
        f"({ROWS / seconds:,.0f} rows/s); site sizes {sizes[0]:,}..{sizes[-1]:,}"
    )
    print(f"time / goal = {seconds / GOAL_S:.2f} ({'PASS' if seconds < GOAL_S else 'FAIL'})")


if __name__ == "__main__":
    main()
