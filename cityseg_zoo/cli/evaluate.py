"""`cityseg-zoo evaluate` (being written; see the issue that owns it)."""


def register(subparsers) -> None:
    pass
