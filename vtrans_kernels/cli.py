"""The ``vtrans`` command. Subcommands: ``info`` (backends report). Pruning, compaction and benchmark
subcommands join as their pipelines land."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtrans`` console script."""
    parser = argparse.ArgumentParser(prog="vtrans", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, and which backend serves each op here")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info
        info.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
