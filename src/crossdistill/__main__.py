"""`python -m crossdistill …`: the same command as `crossdistill …`, for an environment whose
scripts folder is not on PATH (or to pick the interpreter explicitly)."""
import sys

from crossdistill.cli.main import main

sys.exit(main())
