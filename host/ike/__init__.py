"""Sans-I/O IKEv2 (RFC 7296) for the ikeoffload daemon. See README.md in this package.

The names most users need::

    from host.ike import IkeEngine, EngineSettings, OffloadCapabilities, load_connections
"""
from .config import ConfigError, RetransmitPolicy, load as load_connections, parse_connections  # noqa: F401
from .config import parse_settings  # noqa: F401
from .engine import Datagram, EngineSettings, IkeEngine  # noqa: F401
from .events import (  # noqa: F401
    ChildSaDelete, ChildSaFailed, ChildSaInstall, ChildSaOutbound, ChildSaUp, Event, IkeSaDown, IkeSaRekeyed,
    IkeSaUp, IkeWarning,
)
from .proposals import OffloadCapabilities  # noqa: F401
