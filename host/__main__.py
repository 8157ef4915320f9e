"""python -m host: the ikeoffloadd daemon."""
import sys

from host.ikeoffloadd import main

sys.exit(main())
