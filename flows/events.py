"""The Prefect event that starts a data-triggered retrain.

`stepvideo data version` sends `stepvideo.data.versioned` when the data folder's DVC version moved
and a Prefect server is configured (PREFECT_API_URL, or the active profile's). The `on-new-data`
deployment in infra/prefect/prefect.yaml holds a trigger on it, so the server's automation starts
a retrain run with the announced version as a parameter. The cascade's own `version` task does
not send it: a retrain must not start another one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from stepvideo.errors import InputError, UnavailableError

DATA_VERSIONED = "stepvideo.data.versioned"
DATA_RESOURCE = "stepvideo.data"  # the trigger matches on this resource id


def api_url() -> str | None:
    """The Prefect server this process talks to (PREFECT_API_URL or the active profile), or None."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def data_versioned_event(root: Path, target: str, version: str, previous: str | None) -> Any:
    from prefect.events import Event

    return Event(event=DATA_VERSIONED,
                 resource={"prefect.resource.id": DATA_RESOURCE, "prefect.resource.name": str(root / target),
                           "stepvideo.root": str(root), "stepvideo.target": target},
                 payload={"data_version": version, "previous": previous or "", "root": str(root), "target": target})


def emit_data_versioned(root: Path, target: str, version: str, previous: str | None) -> Any:
    """Send the event to the configured server and wait until it is sent; errors propagate."""
    from prefect.events.clients import get_events_client

    url = api_url()
    if not url:
        raise InputError("no Prefect server to notify: set PREFECT_API_URL (or `prefect config set PREFECT_API_URL=...`)")
    event = data_versioned_event(root, target, version, previous)

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            await client.emit(event)

    try:
        asyncio.run(send())
    except OSError as e:  # refused, unreachable, name not found: what a user fixes in PREFECT_API_URL
        raise UnavailableError(f"could not send {DATA_VERSIONED} to the Prefect server at {url}: {e} "
                               "(the data version is recorded; send the event again with "
                               "`stepvideo data version --notify`)") from e
    return event
