"""``python -m fassl``: the same as the ``fassl`` command."""

import sys

from fassl.cli import main

sys.exit(main())
