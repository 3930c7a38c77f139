import sys

from iwdctl.cli import main

sys.exit(main())
