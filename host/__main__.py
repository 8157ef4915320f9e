"""python -m host: the ikeoffloadd daemon."""
import sys

from host.daemon import main

sys.exit(main())
