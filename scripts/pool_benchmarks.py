"""Pool benchmark runs: ``python scripts/pool_benchmarks.py logs/benchmark/runs/<run> <run> ...``.

One run's median is known to a few points at best; runs of the same command on the same
machine pooled round by round narrow that. Prints each ratio per run and pooled, each median
with its 95% bootstrap interval, and writes the table to ``--out`` when given. Runs of
different setups (model, data, image size, precision, machine, CPU model where recorded, window
length and, where the runs keep their Hydra record, every training and benchmark setting but the
number of rounds) are refused, and so is a run given twice. The runs are pooled in one order (by
date) whatever order they are given in. ``--out`` must be a new file in an existing folder: it never replaces one.

A plain argparse script rather than a Hydra app: it reads finished runs and starts none.
"""

import argparse
import sys
from pathlib import Path

from cnnlab.errors import CnnlabError, ConfigValueError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="benchmark run folders (or their benchmark.json)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file (a new one)")
    args = parser.parse_args(argv)

    from cnnlab.benchmark.pooling import load_run, pool, to_markdown
    from cnnlab.utils.io import atomic_write

    out_exists = ConfigValueError(f"--out {args.out} already exists; pick another path or remove it")
    try:
        # Never over a file: --out RUN/benchmark.json would replace the run's results, and it could
        # not be pooled again. Checked before the work, and again by the write (a file made since).
        if args.out is not None and args.out.is_dir():
            raise ConfigValueError(f"--out {args.out} is a folder; give a new file's path, e.g. {args.out / 'pooled.md'}")
        if args.out is not None and (args.out.exists() or args.out.is_symlink()):
            raise out_exists
        if args.out is not None and not args.out.parent.is_dir():
            # A typo in the folder would otherwise leave the table in a new folder nobody looks in.
            raise ConfigValueError(f"--out {args.out}: there is no folder {args.out.parent}; make it first, or give a "
                                   f"path in an existing folder")
        runs = [load_run(path) for path in args.runs]
        report = to_markdown(runs, pool(runs))
        print(report, end="")
        if args.out is not None:
            try:
                atomic_write(args.out, lambda f: f.write(report.encode()), replace=False)
            except FileExistsError:
                raise out_exists from None
            print(f"markdown: {args.out}")
    except CnnlabError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
