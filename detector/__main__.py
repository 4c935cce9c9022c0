"""``python -m detector`` is the ``rcnn`` command."""
import sys

from detector.cli import main

sys.exit(main())
