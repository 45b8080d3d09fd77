"""`python -m ocrwatchd` is the same as the `ocrwatchd` command."""

import sys

from ocrwatchd.cli import main

if __name__ == "__main__":
    sys.exit(main())
