import sys

from ersm.cli import main

sys.exit(main())
