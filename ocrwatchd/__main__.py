"""`python -m ocrwatchd` is the same as the `ocrwatchd` command."""

import sys

from ocrwatchd.cli import main

sys.exit(main())
