"""``python -m gptoss``: the ``gptoss`` command."""

import sys

from .cli import main

sys.exit(main())
