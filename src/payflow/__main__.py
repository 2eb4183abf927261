import sys

from payflow.cli import main

sys.exit(main())
