"""Write the synthetic multi-reference dataset (sigma_core.training.synthetic) for demo runs.

    python -m scripts.make_synthetic_data --out data/synthetic --n 2000
    python -m scripts.make_synthetic_data --out data/synthetic.parquet --n 200
    python -m scripts.make_synthetic_data --out data/synthetic-jsonl --n 200 --format jsonl

(from the repository root).

Parquet goes to one shard when --out ends in .parquet, otherwise to a folder of shards of
--shard-rows rows; jsonl writes OUT/train.jsonl and OUT/images/. The same seed gives the same
files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sigma_core.errors import SigmaError
from sigma_core.training.synthetic import write_manifest, write_parquet, write_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="a .parquet file or a folder")
    parser.add_argument("--n", type=int, default=1000, help="samples (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="image side in px, a multiple of 16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--shard-rows", type=int, default=500, help="rows per parquet shard")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        if args.format == "jsonl":
            written = [write_manifest(args.out, args.n, size=args.size, seed=args.seed)]
        elif args.out.suffix == ".parquet":
            written = [write_parquet(args.out, args.n, size=args.size, seed=args.seed)]
        else:
            written = write_shards(
                args.out, args.n, size=args.size, seed=args.seed, rows_per_shard=args.shard_rows
            )
    except SigmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{args.n} samples of {args.size}x{args.size} px, seed {args.seed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
