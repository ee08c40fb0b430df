"""One file per architecture family; importing this package registers every model name."""
from . import fcn  # noqa: F401
