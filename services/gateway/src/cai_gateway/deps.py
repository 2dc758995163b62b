"""Typed FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cai.v1 import common_pb2
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_gateway.config import Settings
from cai_gateway.problems import Problem


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_orchestrator(request: Request) -> OrchestratorStub:
    """The orchestrator client."""
    stub: OrchestratorStub = request.app.state.orchestrator
    return stub


def get_principal(request: Request) -> common_pb2.Principal:
    """Who is calling. Anonymous access only when explicitly allowed."""
    settings: Settings = request.app.state.settings
    if settings.allow_anonymous:
        return common_pb2.Principal(tenant_id=settings.anonymous_tenant, subject="anonymous")
    raise Problem(401, "An API key is required", headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
OrchestratorDep = Annotated[OrchestratorStub, Depends(get_orchestrator)]
PrincipalDep = Annotated[common_pb2.Principal, Depends(get_principal)]
