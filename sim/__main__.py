"""`python -m sim run|fleet|teacher-server ...` (the same as `stillflow sim ...`)."""

import sys

from sim.cli import main

sys.exit(main())
