"""The Flask side of cloudlog: the extension, its logging handler, and the delivery task."""

from clients.flask_ext.extension import CloudLog, CloudLogConfigError, CloudLogState
from clients.flask_ext.handler import CloudLogHandler

__all__ = ["CloudLog", "CloudLogConfigError", "CloudLogHandler", "CloudLogState"]
