"""sfbridge: real-time generated video for games and VR, served from a local daemon."""

from sfbridge.protocol import PROTOCOL_VERSION

__version__ = "0.1.0"
__all__ = ["PROTOCOL_VERSION", "__version__"]
