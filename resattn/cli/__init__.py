"""The command-line layer, one home for every command face: ``main.py`` (``python -m resattn``, the
``resattn`` console script), ``study.py`` (``resattn study``, ``studies/run.py``), ``report.py``
(``resattn report``, ``studies/report.py``), ``fit.py`` (LightningCLI: ``fit`` / ``validate`` /
``test``, and ``build_run``, the one way to build a run) and ``entry.py`` (what they share).

Empty on purpose: importing a command's module loads only what it needs (no torch before it must).
"""
