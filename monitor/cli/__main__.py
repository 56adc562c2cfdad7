"""``python -m expose.monitor.cli``: the same as the ``expose`` command."""

from expose.monitor.cli.main import main

main()
