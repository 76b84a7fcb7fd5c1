"""``python -m api.cli``: the ``tunery`` command."""

from api.cli import main

main()
