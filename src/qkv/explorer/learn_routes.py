"""The explorer's Learn page and its JSON API (the course, lessons, widgets, answers, progress).

    GET    /learn                      the Learn page (static/learn.html)
    GET    /api/learn/course           lessons with their state, the architecture graph, glossary, FAQ, review due
    GET    /api/learn/lessons/{id}     one lesson: routes, widgets, questions (no keys), the learner's place
    POST   /api/learn/widget           {"widget", "args", "lesson"?, "step"?} -> {"views", "facts", "seconds",
                                       "reveal"? (that build-up step's reveal, filled in)}, computed now
    POST   /api/learn/answer           {"lesson", "question", "answer", "args"?}
                                       -> {"correct", "feedback", "reveal", ...}
    POST   /api/learn/run              {"lesson", "snippet"} -> {"ok", "output", "seconds"} (the course's own code)
    POST   /api/learn/position         {"lesson", "route", "step"} -> {"ok": true}
    GET    /api/learn/progress         the progress file's content
    DELETE /api/learn/progress         forget it -> {"ok": true}
    GET    /api/learn/exercises        the exercises: statement, hints, starter file, the learner's record
    POST   /api/learn/check            {"exercise", "source"} -> the grader's report (`qkv learn check --json`)
                                       with "record"; the code runs only in the grader's child process

Bad ids are a 404 and bad bodies a 400, each with a message; widget and answer
work runs in worker threads, so a model loading for one learner never holds up
the page. At most `CHECKS` solutions are graded at once (503 beyond `CHECKS_WAITING`
waiting), each in a child process with the grader's time and memory limits.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from qkv.learn import LearnError
from qkv.learn.tutor import Tutor
from qkv.learn.widget import Env

__all__ = ["add_learn_routes"]

WIDGET_THREADS = 4
CHECKS = 2  # solutions graded at once (each a child process)
CHECKS_WAITING = 8
CHECK_TIMEOUT = 10.0  # seconds, as `qkv learn check`
CHECK_MEMORY_MB = 2048


def add_learn_routes(
    app: FastAPI, *, tutor: Tutor | None = None, csp: str, page: Callable[[bytes], bytes] = lambda html: html
) -> Tutor:
    """Mount the Learn page and API on ``app``; models come from the app's registry. Returns the tutor.

    ``page`` prepares the page's HTML before it is served (the app writes its token in).
    """
    from qkv.explorer.app import _encode, _only, read_json

    registry = app.state.registry
    if tutor is None:
        env = Env(loader=registry.get, locks=registry.run_lock, models=registry.names)
        tutor = Tutor(env=env)
    app.state.tutor = tutor  # read per request: a test or an embedding app may put another one there

    def tutor_now() -> Tutor:
        return app.state.tutor

    limiter = anyio.CapacityLimiter(WIDGET_THREADS)
    checks = anyio.CapacityLimiter(CHECKS)
    waiting = {"checks": 0}
    html = page(resources.files("qkv.explorer").joinpath("static", "learn.html").read_bytes())
    limit = registry.limits.max_body_bytes

    def ok(payload: dict[str, Any]) -> Response:
        return Response(_encode(payload), media_type="application/json")

    async def body_of(request: Request, required: tuple[str, ...], example: str, optional: tuple[str, ...] = ()):
        """The request's JSON object: only these fields, the required ones present (else a 400 with ``example``)."""
        body = await read_json(request, limit)
        _only(body, required + optional)
        missing = [name for name in required if name not in body]
        if missing:
            raise LearnError(f"{missing[0]}: missing; send {example}")
        return body

    async def in_thread(work: Any) -> Response:
        return ok(await anyio.to_thread.run_sync(work, limiter=limiter))

    @app.exception_handler(LearnError)
    async def learn_error(request: Request, error: LearnError) -> Response:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/learn", include_in_schema=False)
    async def learn_page() -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": csp})

    @app.get("/api/learn/course")
    async def course() -> Response:
        return await in_thread(tutor_now().course_json)

    @app.get("/api/learn/lessons/{ident}")
    async def lesson(ident: str) -> Response:
        return await in_thread(lambda: tutor_now().lesson_json(ident))

    @app.post("/api/learn/widget")
    async def widget(request: Request) -> Response:
        example = '{"widget": "soft-lookup", "args": {}}'
        body = await body_of(request, ("widget",), example, optional=("args", "lesson", "step"))
        return await in_thread(
            lambda: tutor_now().widget(body["widget"], body.get("args"), body.get("lesson"), body.get("step"))
        )

    @app.post("/api/learn/answer")
    async def answer(request: Request) -> Response:
        body = await body_of(
            request, ("lesson", "question", "answer"), '{"lesson": ..., "question": ..., "answer": ...}', ("args",)
        )
        args = body.get("args")
        return await in_thread(lambda: tutor_now().answer(body["lesson"], body["question"], body["answer"], args))

    @app.post("/api/learn/run")
    async def run(request: Request) -> Response:
        body = await body_of(request, ("lesson", "snippet"), '{"lesson": ID, "snippet": INDEX}')
        return await in_thread(lambda: tutor_now().run(body["lesson"], body["snippet"]))

    @app.post("/api/learn/position")
    async def position(request: Request) -> Response:
        body = await body_of(request, ("lesson", "route", "step"), '{"lesson": ID, "route": "build-up", "step": 0}')
        await anyio.to_thread.run_sync(lambda: tutor_now().position(body["lesson"], body["route"], body["step"]))
        return ok({"ok": True})

    @app.get("/api/learn/progress")
    async def progress() -> Response:
        return await in_thread(tutor_now().progress_json)

    @app.delete("/api/learn/progress")
    async def reset() -> Response:
        await anyio.to_thread.run_sync(tutor_now().reset)
        return ok({"ok": True})

    @app.get("/api/learn/exercises")
    async def exercises() -> Response:
        return await in_thread(tutor_now().exercises_json)

    @app.post("/api/learn/check")
    async def check(request: Request) -> Response:
        body = await body_of(
            request, ("exercise", "source"), '{"exercise": "softmax", "source": "def softmax(x): ..."}'
        )
        if waiting["checks"] >= CHECKS_WAITING:
            raise LearnError(f"busy: {waiting['checks']} solutions are being checked; try again shortly", status=503)
        waiting["checks"] += 1
        try:
            work = lambda: tutor_now().check(  # noqa: E731 - runs in a worker thread
                body["exercise"], body["source"], timeout=CHECK_TIMEOUT, memory_mb=CHECK_MEMORY_MB
            )
            return ok(await anyio.to_thread.run_sync(work, limiter=checks))
        finally:
            waiting["checks"] -= 1

    return tutor
