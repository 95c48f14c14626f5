"""`python -m minisapo ...` (and `torchrun --nproc_per_node=N -m minisapo ...`): the `minisapo` command."""

import sys

from minisapo.cli import main

sys.exit(main())
