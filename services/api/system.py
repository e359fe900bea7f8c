"""Operations: ``/healthz`` (no token), ``/metrics`` (Prometheus text, administrators) and the
simulated clock under ``/admin/clock`` (administrators)."""

from fastapi import APIRouter, HTTPException, Response, status

from managed_backups.services.api.dependencies import Caller, Models, RuntimeDep
from managed_backups.services.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from managed_backups.services.api.metrics import render as metrics_text
from managed_backups.services.api.schemas import (
    AUTHENTICATED,
    ClockAdvance,
    ClockAdvanced,
    ClockView,
    Health,
    errors,
)
from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.security import Action

router = APIRouter(tags=["operations"])

ADMINISTRATORS = errors(*AUTHENTICATED, status.HTTP_403_FORBIDDEN)


@router.get("/healthz")
def healthz(models: Models) -> Health:
    return Health(status="ok", projection_position=models.position())


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        status.HTTP_200_OK: {
            "description": "Prometheus text exposition format",
            "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **ADMINISTRATORS,
    },
)
def metrics(who: Caller, models: Models, runtime: RuntimeDep) -> Response:
    """Prometheus text format (``services/api/metrics.py``): per cluster the recoverability
    window, the last successful backup, stored bytes, backups per status, expired and deleted
    counts, so an alert can fire on a cluster that stopped backing up or lost its window.
    Scraped with an administrator's bearer token (it names every cluster)."""
    who.require(Action.ADMINISTER, cluster_id="*")
    return Response(metrics_text(models, runtime.clock.now), media_type=METRICS_CONTENT_TYPE)


@router.get("/admin/clock", responses=ADMINISTRATORS)
def get_clock(who: Caller, runtime: RuntimeDep) -> ClockView:
    who.require(Action.ADMINISTER, cluster_id="*")
    clock = runtime.clock
    if not isinstance(clock, SimulatedClock):
        return ClockView(simulated=False, now=clock.now().isoformat(), services={})
    now = clock.refresh()
    return ClockView(
        simulated=True,
        now=now.isoformat(),
        services={k: v.isoformat() for k, v in clock.reached().items()},
    )


@router.post(
    "/admin/clock",
    responses={
        **ADMINISTRATORS,
        **errors(status.HTTP_409_CONFLICT, status.HTTP_413_CONTENT_TOO_LARGE),
    },
)
def advance_clock(body: ClockAdvance, who: Caller, runtime: RuntimeDep) -> ClockAdvanced:
    who.require(Action.ADMINISTER, cluster_id="*")
    clock = runtime.clock
    if not isinstance(clock, SimulatedClock):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "the simulated clock is not enabled (managed-backups up --simulated-clock)",
        )
    return ClockAdvanced(simulated=True, now=clock.advance(body.advance_seconds).isoformat())
