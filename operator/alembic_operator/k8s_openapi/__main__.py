"""``python -m alembic_operator.k8s_openapi``: regenerate the vendored core/v1 schemas."""

import sys

from . import main

sys.exit(main())
