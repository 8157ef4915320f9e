import sys

from tools.vboard.launcher import main

sys.exit(main())
