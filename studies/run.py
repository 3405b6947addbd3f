"""Train every variant x seed of a study, log each run to W&B, write reports/<study>/<configuration>/.

The documented thin entry to ``resattn study`` (resattn.cli.study.study_main): see --help.
"""

import sys

from resattn.cli.entry import run
from resattn.cli.study import study_main

if __name__ == "__main__":
    sys.exit(run(study_main))
