"""A Flask app served by gunicorn in the fault suite; configured from CLOUDLOG_* variables.

Loaded once in the master with ``--preload``, then forked into the workers: the extension must
start afresh in each child (fork-safe) and flush at each worker's exit.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_cloudlog import CloudLog

app = Flask("gunicorn-faults")
CloudLog(app)
app.logger.info("master loaded the app")  # logged before the fork, by the master


@app.get("/log/<int:number>")
def log_line(number: int) -> str:
    app.logger.info("line %06d", number, extra={"pid": os.getpid()})
    return str(os.getpid())
