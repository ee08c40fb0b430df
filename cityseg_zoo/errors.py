"""Exception types a user can catch and act on."""


class CitysegZooError(Exception):
    """Base class of every error raised on purpose by cityseg_zoo."""


class UnknownModelError(CitysegZooError, ValueError):
    """A model or weight name that is not registered."""


class CheckpointError(CitysegZooError, ValueError):
    """A checkpoint that cannot be read, or whose keys/shapes do not fit the model."""


class WeightsUnavailableError(CitysegZooError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (none released, or offline and not cached)."""


class InputError(CitysegZooError, ValueError):
    """A model input of the wrong type, dtype, rank, channel count or size."""


class ModelArgumentError(CitysegZooError, TypeError):
    """A keyword argument the architecture's builder does not take."""


class ArgumentConflictError(CitysegZooError, ValueError):
    """A requested argument that contradicts the weights being loaded (e.g. CCNet ``recurrence=1`` for R=2)."""
