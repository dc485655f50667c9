"""What the controller changes in kopf's private modules, in one place: each change applied only while kopf's code
is as this module expects.

kopf 1.45 has no setting for its event decoder, cancels its discovery reads
badly, and leaves a watch stream that reports an error at exit; these three
adjustments (and the watch error class that decides a restart) reach into
`kopf._cogs`. Each private module is imported softly: a kopf release that
moves one leaves what depends on it not applied, said once in the log, and
never makes this module unimportable. Only handlers.py, kopf's adapter, and
the process's start (lifecycle.py) use it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import kopf
import msgspec

_KOPF_DIR = os.path.dirname(kopf.__file__) + os.sep

logger = logging.getLogger("nodeipam")


def _kopf_internal(name: str) -> ModuleType | None:
    """One of kopf's private modules; None if this kopf release has no module of that name."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# kopf's private modules, adjusted below only while their code is as expected. A kopf release that moves one
# leaves its adjustment not applied (said in the log when it would be), never this module unimportable.
kopf_api = _kopf_internal("kopf._cogs.clients.api")
kopf_scanning = _kopf_internal("kopf._cogs.clients.scanning")
kopf_watching = _kopf_internal("kopf._cogs.clients.watching")


def _kopf_version() -> str:
    return importlib.metadata.version("kopf")


#: Set on what replaces one of kopf's names, so that a second operator in this process does not replace it again.
_ADJUSTED = "adjusted_by_nodeipam"


def _wrap_once(
    module: ModuleType | None,
    name: str,
    as_expected: Callable[[Any], bool],
    wrap: Callable[[ModuleType, Any], Any],
    left_as_it_is: str,
) -> bool:
    """Replace `module`'s `name` by `wrap(module, original)`, once; False, and a log line ending in `left_as_it_is`,
    if this kopf release has no such module or its `name` is not `as_expected`."""
    original = getattr(module, name, None)
    if getattr(original, _ADJUSTED, False):
        return True  # a second operator in this process
    if module is None or not as_expected(original):
        logger.info("kopf %s: %s", _kopf_version(), left_as_it_is)
        return False
    replacement = wrap(module, original)
    setattr(replacement, _ADJUSTED, True)
    setattr(module, name, replacement)
    return True


class _NoSuchError(Exception):
    """Stands for kopf's watch error class if a kopf release renames it: then no failure of kopf's is retried."""


def kopf_watch_error() -> type[Exception]:
    """What kopf raises for an ERROR event in a watch stream (other than 410 Gone, which it handles itself).

    _NoSuchError, with a log line, if this kopf release has no such class where 1.45 has it.
    """
    error = getattr(kopf_watching, "WatchingError", None)
    if isinstance(error, type) and issubclass(error, Exception):
        return error
    logger.info("kopf %s: its watch errors are unknown here: one ends the controller instead of restarting kopf", _kopf_version())
    return _NoSuchError


def quiet_closing_of_kopf_streams(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, a kopf watch stream that failed to close is a debug line, not an ERROR traceback.

    When kopf's watcher is cancelled between two events, its watch generator
    stays suspended inside kopf's own `streaming_block` context manager;
    asyncio closes it as the loop ends, and that context manager answers
    the close with "generator didn't stop after athrow()". By then every
    handler has returned: nothing is lost, only the log line is alarming.
    Any other exception the loop reports keeps its default handling.
    """

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        generator = context.get("asyncgen")
        code = getattr(generator, "ag_code", None)
        if code is not None and code.co_filename.startswith(_KOPF_DIR):
            logger.debug("kopf's watch stream %s ended at exit: %r", code.co_name, context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class _MsgspecJson:
    """What kopf's API module calls on its `json` name: `loads`, as msgspec's decoder."""

    loads = staticmethod(msgspec.json.decode)


def decode_kopf_watch_events_with_msgspec() -> bool:
    """kopf decodes every watch event with msgspec instead of the stdlib's json; False if kopf's code has changed.

    kopf has no setting for its decoder, and it decodes every event of the
    Node watch (two per Node: its creation and our patch, ~10 KB each) with
    `json.loads` in its API module; that was a fifth of the controller's CPU
    in a burst. msgspec gives the same dicts and lists, about twice as fast.
    Only the module's `json` name is replaced, and only while it is the
    stdlib's json module: a kopf release that decodes differently is left as it is.
    """
    return _wrap_once(
        kopf_api,
        "json",
        lambda decoder: decoder is json,
        lambda _module, _decoder: _MsgspecJson,
        "its watch events are decoded by its own decoder",
    )


def cancel_kopfs_discovery_reads_with_it() -> bool:
    """Cancelling kopf's scan of the API's discovery documents cancels every read it started; False if kopf changed.

    kopf reads the documents concurrently with `asyncio.as_completed`, which
    leaves its reads running when the scan is cancelled (a SIGTERM within a
    second of kopf's start). They went on after kopf had closed its HTTP
    session, failed there ("Connector is closed"), and kopf logged each as
    an ERROR while the controller stopped cleanly. The scan is wrapped so
    that, as it ends, it cancels the reads of kopf's scanning module that
    began during it and still run. Only a coroutine function is wrapped, once.
    """

    def wrap(scanning: ModuleType, scan: Any) -> Any:
        @functools.wraps(scan)
        async def scan_resources(**kwargs: Any) -> Any:
            before = asyncio.all_tasks()
            try:
                return await scan(**kwargs)
            finally:  # none is left when the scan ends by itself
                for task in asyncio.all_tasks() - before:
                    code = getattr(task.get_coro(), "cr_code", None)
                    if code is not None and code.co_filename == scanning.__file__:
                        task.cancel()

        return scan_resources

    return _wrap_once(kopf_scanning, "scan_resources", inspect.iscoroutinefunction, wrap, "its discovery is left as it is")


def cancel_kopfs_stream_requests_on_their_stopper() -> bool:
    """A watch request still waiting for its answer is cancelled when its stopper fires; False if kopf changed.

    kopf's `api.stream` means to cancel its request when the stopper fires before the answer's headers came
    (a watch kopf stops while it waits to reconnect, or for new credentials), but its callback looks for the
    task outside of any task, fails an assertion, and cancels nothing. The watch then waits for good: for
    credentials from an authenticator that has stopped, after a watch error ended kopf's run. kopf's run
    never ends, is never started again, and no Node is served any more. The stream is wrapped so that the
    stopper cancels the task that reads it, as kopf meant, until the first event arrives (then kopf closes
    the response itself).
    """

    def wrap(_api: ModuleType, stream: Any) -> Any:
        @functools.wraps(stream)
        async def cancelling_stream(url: str, *, stopper: asyncio.Future[Any] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
            reader = asyncio.current_task()
            answered = False

            def cancel_the_request(_: asyncio.Future[Any]) -> None:
                if not answered and reader is not None and not reader.done():
                    reader.cancel()

            if stopper is not None and not stopper.done():
                stopper.add_done_callback(cancel_the_request)
            try:
                async for event in stream(url, stopper=stopper, **kwargs):
                    answered = True
                    yield event
            finally:
                if stopper is not None:
                    stopper.remove_done_callback(cancel_the_request)

        return cancelling_stream

    return _wrap_once(kopf_api, "stream", inspect.isasyncgenfunction, wrap, "its stream requests are left as they are")
