"""``python -m resattn summary [switches]`` prints a configuration's cost as JSON;
``python -m resattn fit|validate|test [LightningCLI flags]`` trains and evaluates one run."""

import sys

from resattn import summary
from resattn.cli import cli_main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summary"]:
        summary.main(argv[1:])
    else:
        cli_main(argv)


if __name__ == "__main__":
    main()
