"""`python -m stillflow ...`: the same command line as the `stillflow` script (`stillflow.cli.main`)."""

import sys

from stillflow.cli import main

sys.exit(main())
