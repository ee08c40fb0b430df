"""`cityseg-zoo predict` (being written; see the issue that owns it)."""


def register(subparsers) -> None:
    pass
