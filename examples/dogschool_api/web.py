"""The HTTP API: Starlette routes over the async Dog School, run with its projection.

| method and path            | what it does                                      |
|----------------------------|---------------------------------------------------|
| ``POST /dogs``             | ``{"name": ...}``: register a dog, 201 ``{"id"}`` |
| ``POST /dogs/{id}/tricks`` | ``{"trick": ...}``: teach it a trick, 204          |
| ``GET /dogs/{id}``         | ``{"name", "tricks"}``, or 404                    |
| ``GET /tricks/{trick}``    | ``{"trick", "dogs"}``: from the projection        |
| ``GET /notifications``     | ``?start=1&limit=10``: the school's log           |
| ``GET /healthz``           | 200 once the applications are open                |

The projection follows the school in the same event loop (an ``AsyncRunner``), so it lags
a save by a moment: ``/tricks`` is eventually consistent.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from eventsourcing.asyncio import AsyncRunner
from examples.dogschool_api.application import DogNotFoundError, DogSchool, TrickTallies, system


def _runner(request: Request) -> AsyncRunner:
    runner: AsyncRunner = request.app.state.runner
    return runner


async def _json_field(request: Request, field: str) -> str:
    body: Any = await request.json()
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a JSON object with a non-empty string {field!r}")
    return value


async def register_dog(request: Request) -> Response:
    """Register a dog."""
    try:
        name = await _json_field(request, "name")
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    dog_id = await _runner(request).get(DogSchool).register_dog(name)
    return JSONResponse({"id": str(dog_id)}, status_code=201)


async def add_trick(request: Request) -> Response:
    """Teach a dog a trick."""
    try:
        trick = await _json_field(request, "trick")
        dog_id = UUID(request.path_params["dog_id"])
        await _runner(request).get(DogSchool).add_trick(dog_id, trick)
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except DogNotFoundError as e:
        return JSONResponse({"error": str(e)}, status_code=404)
    return Response(status_code=204)


async def get_dog(request: Request) -> Response:
    """A dog's name and tricks."""
    try:
        dog_id = UUID(request.path_params["dog_id"])
        dog = await _runner(request).get(DogSchool).get_dog(dog_id)
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except DogNotFoundError as e:
        return JSONResponse({"error": str(e)}, status_code=404)
    return JSONResponse(dog)


async def trick_tally(request: Request) -> Response:
    """How many dogs know a trick, from the projection."""
    trick = request.path_params["trick"]
    dogs = await _runner(request).get(TrickTallies).dogs_knowing(trick)
    return JSONResponse({"trick": trick, "dogs": dogs})


async def notifications(request: Request) -> Response:
    """A page of the school's notification log."""
    try:
        start = int(request.query_params.get("start", "1"))
        limit = int(request.query_params.get("limit", "10"))
        page = await _runner(request).get(DogSchool).notification_log.select(start, limit)
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    items = [
        {
            "id": n.id,
            "originator_id": str(n.originator_id),
            "version": n.originator_version,
            "topic": n.topic,
        }
        for n in page
    ]
    return JSONResponse(items)


async def healthz(request: Request) -> Response:
    """200 once the applications are open."""
    return JSONResponse({"ok": True})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run the school and its projection while the server runs."""
    async with AsyncRunner(system) as runner:
        app.state.runner = runner
        yield
    print("dogschool_api: applications closed", file=sys.stderr, flush=True)


def create_app() -> Starlette:
    """The Starlette application (configured by the environment, read at start-up)."""
    routes = [
        Route("/dogs", register_dog, methods=["POST"]),
        Route("/dogs/{dog_id}/tricks", add_trick, methods=["POST"]),
        Route("/dogs/{dog_id}", get_dog, methods=["GET"]),
        Route("/tricks/{trick}", trick_tally, methods=["GET"]),
        Route("/notifications", notifications, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
