"""Rebuild reports/<study>/<configuration>/ from stored results (or a W&B project).

The documented thin entry to ``resattn report`` (resattn.commands.report_main): see --help.
"""

import sys

from resattn.commands import report_main

if __name__ == "__main__":
    sys.exit(report_main())
