import sys

from mergetui.cli import main

sys.exit(main())
