"""``cityseg-zoo list | info | download | convert``: the model and weight catalogue, fetching and converting."""


def register(subparsers) -> None:
    pass
