"""``python -m sb3_stepnft``: the ``sb3-stepnft`` command line (:mod:`sb3_stepnft.cli`)."""

import sys

from sb3_stepnft.cli import main

if __name__ == "__main__":
    sys.exit(main())
