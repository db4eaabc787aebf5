"""``python -m cwgnc_jax.report``: runs ``main.main`` on the command line's arguments."""

import sys

from cwgnc_jax.report import main

main.main(sys.argv[1:])
