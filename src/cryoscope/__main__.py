"""`python -m cryoscope` (also the entry point for torchrun)."""

import sys

from cryoscope.cli.main import main

sys.exit(main())
