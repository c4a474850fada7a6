"""``python -m benchmark.report DIR... [--output OUT]``."""

from benchmark.report import main

main()
