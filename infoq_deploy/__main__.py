import sys

from infoq_deploy.cli import main

sys.exit(main())
