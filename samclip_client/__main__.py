"""`python -m samclip_client label ...` is `samclip label ...`."""

import sys

from samclip_client.cli import main

sys.exit(main())
