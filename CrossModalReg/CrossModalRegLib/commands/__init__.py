"""Sub-commands of the ``crossmodalreg`` command line (one module each, with ``add_parser``)."""
