"""``python -m resattn``: the command dispatch of :mod:`resattn.cli.main` (its ``--help`` lists the commands)."""

import sys

from resattn.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
