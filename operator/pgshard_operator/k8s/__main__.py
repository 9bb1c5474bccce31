"""``python -m pgshard_operator.k8s``: the ``pgshard-operator`` command (used by tests
to run this checkout's operator)."""

import sys

from ..cli import operator_main

sys.exit(operator_main())
