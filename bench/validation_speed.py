"""How fast one site validates: 1,000,000 synthetic rows through the whole contract suite.

    python bench/validation_speed.py [--rows N] [--keep DIR]

Prints rows, seconds and rows/s for the first call in a fresh process (which pays for
importing Great Expectations) and for a second call (what a long-lived site actor pays),
and whether each is under the 10 s target. Writes the site's Data Docs as a real run does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import DEFAULT_CONTRACT  # noqa: E402
from pipeline.contract import load_contract  # noqa: E402
from pipeline.synth import synthesize  # noqa: E402
from pipeline.validation import validate_extract  # noqa: E402

TARGET_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the data here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        t0 = time.perf_counter()
        _, written = synthesize(out, sites=1, rows=args.rows)
        site = written[0]
        print(f"synthesized {site.rows:,} rows in {time.perf_counter() - t0:.1f} s -> {site.path}")
        contract = load_contract(DEFAULT_CONTRACT)

        ok = True
        for label in ("first call (imports GE)", "second call (warm site)"):
            t0 = time.perf_counter()
            summary = validate_extract(site.path, contract, site=site.name)
            seconds = time.perf_counter() - t0
            under = seconds < TARGET_S
            ok &= under
            print(
                f"{label:26s} rows={summary.rows:,}  seconds={seconds:.2f}  "
                f"rows/s={summary.rows / seconds:,.0f}  under {TARGET_S:.0f} s: "
                f"{'yes' if under else 'NO'}  (passed={summary.passed}, "
                f"{len(summary.results)} results)"
            )
            for reason in summary.failures():
                print(f"    failure: {reason}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
