"""python -m tbfast connect-and-read PATH...: the same as the tbfast command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
