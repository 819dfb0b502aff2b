"""Summarise a sweep: ``python scripts/summarize.py logs/train/multiruns/<sweep>``.

Writes ``summary.md`` (printed too), ``summary.csv`` and ``summary.png`` into the sweep folder:
one row per job with its overrides and final metrics, best first by the optimised metric,
failed jobs as failed rows, and a plot of the metric against each swept parameter.

A plain argparse script rather than a Hydra app: it reads finished runs and starts none, so it
needs no config composition and no run folder of its own.
"""

import argparse
import sys
from pathlib import Path

from cnnlab.errors import CnnlabError, ConfigValueError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (logs/train/multiruns/<sweep>), or any folder of run folders")
    parser.add_argument("--metric", help="rank by this final metric (default: the jobs' optimized_metric, else val/acc_best)")
    parser.add_argument("--direction", choices=["maximize", "minimize"],
                        help="best is highest or lowest (default: the Optuna sweeper's direction for its metric, "
                             "else minimize for a loss, maximize otherwise)")
    parser.add_argument("--out", type=Path, help="write the summary files here instead of into the sweep folder")
    args = parser.parse_args(argv)

    from cnnlab.tasks.summarize import summarize, to_markdown, write_summary

    try:
        summary = summarize(args.sweep_dir, metric=args.metric, direction=args.direction)
        written = write_summary(summary, args.out)
    except CnnlabError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        # 2 for a bad argument (the folder, --metric), as argparse exits for its own checks.
        return 2 if isinstance(error, ConfigValueError) else 1
    print(to_markdown(summary))
    print("\n".join(f"{kind}: {path}" for kind, path in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
