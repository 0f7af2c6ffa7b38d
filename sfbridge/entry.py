"""The ``sfbridge`` console script: :func:`sfbridge.cli.main` behind a guard for Ctrl-C pressed while the
CLI is still importing (about 0.1-0.3 s), which would otherwise print a KeyboardInterrupt traceback."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a SIGINT death (sfbridge.cli uses this one too)


def main() -> int:
    try:
        from sfbridge.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    return cli_main()
