"""Dependency aliases for the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.ingest.pipeline import WritePipeline
from services.ingest.settings import IngestSettings


def _pipeline(request: Request) -> WritePipeline:
    pipeline: WritePipeline = request.app.state.pipeline
    return pipeline


def _settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


PipelineDep = Annotated[WritePipeline, Depends(_pipeline)]
SettingsDep = Annotated[IngestSettings, Depends(_settings)]
