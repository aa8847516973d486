import sys

from stmwatch.daemon.cli import main

sys.exit(main())
