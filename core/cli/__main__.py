"""``python -m millpond.cli``: the ``millpond`` command."""

import sys

from . import main

sys.exit(main())
