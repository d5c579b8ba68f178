"""python -m foldnet: the foldnet console script."""
import sys

from foldnet.commands.main import main

sys.exit(main())
