"""Train every variant x seed of a study, log each run to W&B, write reports/<study>/<configuration>/.

The documented thin entry to ``resattn study`` (resattn.commands.study_main): see --help.
"""

import sys

from resattn.commands import study_main
from resattn.entry import run

if __name__ == "__main__":
    sys.exit(run(study_main))
