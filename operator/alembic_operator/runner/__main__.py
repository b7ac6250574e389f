"""`python -m alembic_operator.runner`: the runner, as the zipapp runs it."""

import sys

from .cli import main

sys.exit(main())
