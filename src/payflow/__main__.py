import sys

from payflow.cli.main import main

sys.exit(main())
