"""``python -m ipsecd`` runs the daemon."""

import sys

from ipsecd.daemon import main

sys.exit(main())
