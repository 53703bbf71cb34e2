"""The Flask side of cloudlog: the extension, its logging handler, and the delivery task."""

from flask_cloudlog.extension import CloudLog, CloudLogConfigError, CloudLogState
from flask_cloudlog.handler import CloudLogHandler

__all__ = ["CloudLog", "CloudLogConfigError", "CloudLogHandler", "CloudLogState"]
