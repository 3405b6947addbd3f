"""``python -m resattn`` (or the ``resattn`` console script):

- ``study STUDY [...]``: train a study and write its report (``studies/run.py``);
- ``report STUDY [...]``: rebuild a study's reports from stored results (``studies/report.py``);
- ``summary [switches]``: a configuration's cost as JSON;
- ``fit|validate|test [LightningCLI flags]``: train and evaluate one run;
- ``masks RUN IMAGE... --out FILE.png``: a trained network's soft masks over your images;
- ``predict RUN IMAGE...``: its top-5 classes for your images;
- ``export RUN --out DIR``: its weights (safetensors), config and model card;
- ``settings``: every setting's declared range, as a markdown table (docs/bad-input.md).
"""

import sys

from resattn.cli.entry import run

COMMANDS = ("study", "report", "summary", "settings", "masks", "predict", "export", "fit", "validate", "test")


def main(argv: list[str] | None = None) -> int:
    return run(_dispatch, sys.argv[1:] if argv is None else argv)


def _dispatch(argv: list[str]) -> int | None:
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in (None, "-h", "--help"):
        print(__doc__.replace("``", "`").strip() + "\n\nEach command takes --help.")
        return 0 if command else 2
    if command not in COMMANDS and not command.startswith("-"):
        from resattn.study.spec import suggest

        print(
            f"resattn: error: unknown command {command!r}{suggest(command, list(COMMANDS))}; commands: "
            f"{', '.join(COMMANDS)} (see resattn --help)",
            file=sys.stderr,
        )
        return 2
    if command == "settings":
        from resattn.study.spec import ranges_markdown

        print(ranges_markdown(), end="")
        return 0
    if command == "study":
        from resattn.cli.study import study_main

        return study_main(rest)
    if command == "report":
        from resattn.cli.report import report_main

        return report_main(rest)
    if command in ("masks", "predict", "export"):
        from resattn.cli import models

        return getattr(models, f"{command}_main")(rest)
    if command == "summary":
        from resattn import summary

        summary.main(rest)
        return 0
    from resattn.cli.fit import cli_main

    cli_main(argv)
    return 0
