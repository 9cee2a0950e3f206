"""`python -m shelfgate`."""

from shelfgate.cli import main

raise SystemExit(main())
