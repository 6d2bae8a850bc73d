"""``python -m agl_tinker.cli``: the ``agl-tinker`` console script."""

import sys

from agl_tinker.cli.main import main

sys.exit(main())
