"""`python -m bnstudy` is the `bnstudy` command."""

from bnstudy.cli import main

raise SystemExit(main())
