"""The small demo Flask app that ``cloudlog dev`` runs: its routes log at several levels."""

from __future__ import annotations

import random
from typing import Any

from flask import Flask, jsonify
from flask.logging import default_handler

from flask_cloudlog import CloudLog

DEMO_LOG_GROUP = "cloudlog/demo"
DEMO_LOG_STREAM = "web"


def create_demo_app(**cloudlog_options: Any) -> Flask:
    app = Flask("cloudlog-demo")
    app.config.update(CLOUDLOG_LOG_GROUP=DEMO_LOG_GROUP, CLOUDLOG_LOG_STREAM=DEMO_LOG_STREAM)
    CloudLog(app, **cloudlog_options)
    # The demo's lines are shown as read back from CloudWatch, not echoed to the terminal.
    app.logger.removeHandler(default_handler)

    @app.get("/checkout/<int:order>")
    def checkout(order: int) -> Any:
        app.logger.info("checkout started for order %d", order, extra={"order": order})
        total = round(random.uniform(5, 500), 2)
        if total > 400:
            app.logger.warning("large order %d: %.2f", order, total, extra={"total": total})
        app.logger.info("order %d paid", order, extra={"total": total})
        return jsonify(order=order, total=total)

    @app.get("/fail")
    def fail() -> Any:
        try:
            raise RuntimeError("payment provider timed out")
        except RuntimeError:
            app.logger.exception("payment failed")
        return jsonify(error="payment failed"), 502

    return app
