"""python -m gitsync.reload"""

import sys

from . import main

sys.exit(main())
