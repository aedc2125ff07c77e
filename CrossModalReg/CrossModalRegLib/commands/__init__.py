"""Sub-commands of the ``crossmodalreg`` command line (one module each, with ``add_parser``)."""


def add_skip_unpaired_option(parser, *aliases: str) -> None:
    """``--skip-unpaired-landmarks``, the same on every command that pairs landmarks by label (register, validate,
    landmarks register): without it a label in one file only is an error naming it."""
    parser.add_argument("--skip-unpaired-landmarks", *aliases, dest="skip_unpaired_landmarks", action="store_true",
                        help="skip landmarks whose label is in one file only (they are listed); default: an error "
                             "naming them")
