"""Rebuild reports/<study>/<configuration>/ from stored results (or a W&B project).

The documented thin entry to ``resattn report`` (resattn.cli.report.report_main): see --help.
"""

import sys

from resattn.cli.entry import run
from resattn.cli.report import report_main

if __name__ == "__main__":
    sys.exit(run(report_main))
