"""The event bus, modelled on Erlang's ``:telemetry``.

``attach`` / ``attach_many`` / ``detach`` register handlers, ``execute`` runs
them synchronously in the emitter, ``span`` wraps work in start and
stop/exception events, ``list_handlers`` shows what is attached. ``CATALOG``
lists every event pypit emits with its exact keys and their types; attaching
to a ``("pypit", ...)`` name it does not list warns with
``UnknownEventWarning``. ``capture`` collects events for tests.
"""

from pypit._decorate import publish as _publish
from pypit.telemetry._capture import Capture as Capture
from pypit.telemetry._capture import CapturedEvent as CapturedEvent
from pypit.telemetry._capture import capture as capture
from pypit.telemetry._catalog import CATALOG as CATALOG
from pypit.telemetry._catalog import EventSpec as EventSpec
from pypit.telemetry._catalog import Measurement as Measurement
from pypit.telemetry._catalog import MetadataKey as MetadataKey
from pypit.telemetry._catalog import UnknownEventWarning as UnknownEventWarning
from pypit.telemetry._catalog import catalog_event as catalog_event
from pypit.telemetry._registry import EventName as EventName
from pypit.telemetry._registry import Handler as Handler
from pypit.telemetry._registry import HandlerFunction as HandlerFunction
from pypit.telemetry._registry import attach as attach
from pypit.telemetry._registry import attach_many as attach_many
from pypit.telemetry._registry import detach as detach
from pypit.telemetry._registry import execute as execute
from pypit.telemetry._registry import list_handlers as list_handlers
from pypit.telemetry._span import Span as Span
from pypit.telemetry._span import span as span

__all__ = [
    "CATALOG",
    "Capture",
    "CapturedEvent",
    "EventName",
    "EventSpec",
    "Handler",
    "HandlerFunction",
    "Measurement",
    "MetadataKey",
    "Span",
    "UnknownEventWarning",
    "attach",
    "attach_many",
    "capture",
    "catalog_event",
    "detach",
    "execute",
    "list_handlers",
    "span",
]

_publish(globals(), __all__, __name__)
