"""One process of a distributed run: `python -m tunesmith.train.worker CONFIG RUN_ID [--set k=v ...]`.

`tunesmith train --num-processes N` prepares the data and opens the run, then starts N of these
through the launcher; every one trains its share, and the main one (rank 0) keeps the books and
registers the version.
"""

from __future__ import annotations

import argparse

from tunesmith.config import load_config
from tunesmith.train.run import train_existing_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tunesmith.train.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config")
    parser.add_argument("run_id")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true", help="continue the stopped run from its checkpoint")
    args = parser.parse_args(argv)
    train_existing_run(load_config(args.config, args.overrides), args.run_id, resume=args.resume)


if __name__ == "__main__":
    main()
