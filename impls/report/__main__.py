"""``python -m impls.report FILES...``: the report's command line (see :mod:`.cli`)."""

import sys

from impls.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
