"""`python -m bench ...` is `kvstore bench ...`."""

import sys

from bench.cli import main

sys.exit(main())
