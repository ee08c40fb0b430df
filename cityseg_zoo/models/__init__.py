"""One file per architecture family; importing this package registers every model name."""
from . import fcn  # noqa: F401
from . import galdnet  # noqa: F401
from . import dgcnet  # noqa: F401
from . import pspnet  # noqa: F401
from . import deeplabv3  # noqa: F401
from . import ocnet  # noqa: F401
from . import danet  # noqa: F401
from . import ccnet  # noqa: F401
from . import deeplabv3plus  # noqa: F401
from . import gffnet  # noqa: F401
from . import mmseg  # noqa: F401
from . import segformer  # noqa: F401
from . import mask2former  # noqa: F401
