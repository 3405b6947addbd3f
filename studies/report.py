"""Rebuild reports/<study>/<configuration>/ from stored results (or a W&B project).

The documented thin entry to ``resattn report`` (resattn.commands.report_main): see --help.
"""

import sys

from resattn.commands import report_main
from resattn.entry import run

if __name__ == "__main__":
    sys.exit(run(report_main))
