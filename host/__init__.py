"""ikeoffloadd and ikeoffloadctl: the IKEv2 daemon, its control socket and its board link."""

__version__ = "0.1.0"
