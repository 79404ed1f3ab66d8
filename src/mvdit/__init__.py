"""mvdit: small, fast text-to-video diffusion transformers (arXiv 2507.13343, re-implemented)."""

__version__ = "0.1.0"


class MvditError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
