"""``python -m bulkjob``: the command line."""

from .cli import main

raise SystemExit(main())
