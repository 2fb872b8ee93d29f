"""``python -m mmsb``: the command line."""
import sys

from mmsb.cli import main

sys.exit(main())
