"""`dt-collector` with the test-only `type: fake` source registered (for subprocess tests)."""

import sys

import tests.fakesource  # noqa: F401  registers type: fake
from collector.cli import main

if __name__ == "__main__":
    sys.exit(main())
