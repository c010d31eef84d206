"""`python -m harvester` runs the same CLI as the console script."""

from harvester.cli import main

raise SystemExit(main())
