"""`python -m model_export ...`: see model_export/cli.py."""

from model_export.cli import main

raise SystemExit(main())
