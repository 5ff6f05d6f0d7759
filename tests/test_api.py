"""The public surface: the names code written for ``eventsourcing`` 9.x imports exist, and
every public class, function and method of ours says what it is for."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

# Names that code and tests written for eventsourcing 9.5.6 import (API.md sections 1-12).
REQUIRED = {
    "eventsourcing.utils": "get_topic construct_topic resolve_topic register_topic "
    "clear_topic_cache TopicError retry strtobool Environment EnvType reversed_keys "
    "get_method_name",
    "eventsourcing.dispatch": "singledispatchmethod",
    "eventsourcing.domain": "EventSourcingError ProgrammingError OriginatorIDError "
    "OriginatorVersionError TZINFO datetime_now_with_tzinfo create_utc_datetime_now "
    "CanCreateTimestamp DomainEventProtocol MutableAggregateProtocol "
    "ImmutableAggregateProtocol MutableOrImmutableAggregate CollectEventsProtocol "
    "CanMutateProtocol SnapshotProtocol TAggregateID TAggregateID_co TDomainEvent "
    "SDomainEvent TAggregate TMutableOrImmutableAggregate TDecoratableType AbstractDecision "
    "HasOriginatorIDVersion CanMutateAggregate CanInitAggregate MetaDomainEvent "
    "EventsourcingType filter_kwargs_for_method_params DomainEvent AggregateEvent "
    "AggregateCreated LogEvent CanSnapshotAggregate Snapshot BaseAggregate Aggregate "
    "MetaAggregate event triggers aggregate CommandMethodDecorator "
    "UnboundCommandMethodDecorator BoundCommandMethodDecorator CanTriggerEvent "
    "AbstractDecoratedFuncCaller DecoratedFuncCaller patch_dataclasses_process_class "
    "all_func_decorators decorated_func_callers decorated_funcs CallableType",
    "eventsourcing.persistence": "Transcoding Transcoder JSONTranscoder UUIDAsHex "
    "DecimalAsStr DatetimeAsISO TranscodingNotRegisteredError StoredEvent Notification "
    "Tracking Recording Compressor Cipher Mapper find_id_convertor str_to_uuid_convertor "
    "pass_through_convertor RecordConflictError PersistenceError InterfaceError "
    "DatabaseError DataError OperationalError ConnectionUnavailableError IntegrityError "
    "InternalError ProgrammingError NotSupportedError WaitInterruptedError "
    "MapperDeserialisationError InfrastructureFactoryError ConnectionPoolClosedError "
    "ConnectionNotFromPoolError Recorder AggregateRecorder ApplicationRecorder "
    "TrackingRecorder ProcessRecorder Subscription ListenNotifySubscription Queue ShutDown "
    "EventStore BaseInfrastructureFactory InfrastructureFactory TTrackingRecorder Cursor "
    "Connection ConnectionPool",
    "eventsourcing.popo": "POPORecorder POPOAggregateRecorder POPOApplicationRecorder "
    "POPOSubscription POPOTrackingRecorder POPOProcessRecorder POPOFactory Factory",
    "eventsourcing.sqlite": "SQLiteCursor SQLiteConnection SQLiteTransaction "
    "SQLiteConnectionPool SQLiteDatastore SQLiteRecorder SQLiteAggregateRecorder "
    "SQLiteApplicationRecorder SQLiteTrackingRecorder SQLiteProcessRecorder SQLiteFactory "
    "Factory SQLITE3_DEFAULT_LOCK_TIMEOUT",
    "eventsourcing.cipher": "AESCipher",
    "eventsourcing.cryptography": "AESCipher",
    "eventsourcing.compressor": "ZlibCompressor",
    "eventsourcing.application": "Application Repository Cache LRUCache Section "
    "NotificationLog LocalNotificationLog ProcessingEvent EventSourcedLog "
    "AggregateNotFoundError ProgrammingError project_aggregate TApplication "
    "ProjectorFunction MutatorFunction",
    "eventsourcing.interface": "NotificationLogInterface NotificationLogJSONService "
    "NotificationLogJSONClient",
    "eventsourcing.postgres": "PgStoredEvent ConnectionPool PostgresDatastore PostgresRecorder "
    "PostgresAggregateRecorder PostgresApplicationRecorder PostgresSubscription "
    "PostgresTrackingRecorder PostgresProcessRecorder BasePostgresFactory PostgresFactory "
    "Factory",
    "eventsourcing.projection": "ApplicationSubscription Projection EventSourcedProjection "
    "BaseProjectionRunner ProjectionRunner EventSourcedProjectionRunner TApplication "
    "TEventSourcedProjection",
    "eventsourcing.system": "RecordingEvent RecordingEventReceiver Follower Leader "
    "ProcessApplication System Runner SingleThreadedRunner NewSingleThreadedRunner "
    "MultiThreadedRunner NewMultiThreadedRunner RunnerAlreadyStartedError "
    "NotificationPullingError NotificationConvertingError EventProcessingError "
    "NotificationLogReader PullingThread ConvertingThread ProcessingThread ConvertingJob",
    "eventsourcing.tests.postgres_utils": "drop_tables pg_close_all_connections",
}


@pytest.mark.parametrize("module_name", sorted(REQUIRED))
def test_names_of_the_9x_api_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in REQUIRED[module_name].split() if not hasattr(module, name)]
    assert missing == []


def test_three_different_programming_errors() -> None:
    from eventsourcing import application, domain, persistence

    errors = {domain.ProgrammingError, persistence.ProgrammingError, application.ProgrammingError}
    assert len(errors) == 3
    assert issubclass(persistence.ProgrammingError, persistence.DatabaseError)


def public_members(module: ModuleType) -> list[tuple[str, object]]:
    """Classes and functions defined in ``module`` (not imported), and their own methods."""
    members: list[tuple[str, object]] = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            members.append((name, obj))
        elif inspect.isclass(obj):
            members.append((name, obj))
            for attr, value in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(value):
                    continue
                members.append((f"{name}.{attr}", value))
    return members


def inherits_docstring(qualname: str, obj: object, module: ModuleType) -> bool:
    """An overriding method may rely on the docstring of the method it implements."""
    if "." not in qualname:
        return False
    cls_name, attr = qualname.split(".", 1)
    cls = getattr(module, cls_name)
    return any(getattr(getattr(base, attr, None), "__doc__", None) for base in cls.__mro__[1:])


# The modules of the eventsourcing.postgres package (its public classes are checked as
# eventsourcing.postgres's, whose topics they keep; these modules hold the rest).
POSTGRES_MODULES = [
    "eventsourcing.postgres.aggregate",
    "eventsourcing.postgres.application",
    "eventsourcing.postgres.datastore",
    "eventsourcing.postgres.errors",
    "eventsourcing.postgres.factory",
    "eventsourcing.postgres.identifiers",
    "eventsourcing.postgres.pool",
    "eventsourcing.postgres.process",
    "eventsourcing.postgres.recorder",
    "eventsourcing.postgres.saves",
    "eventsourcing.postgres.scripts",
    "eventsourcing.postgres.subscription",
    "eventsourcing.postgres.tracking",
]


@pytest.mark.parametrize("module_name", sorted(REQUIRED) + POSTGRES_MODULES)
def test_every_public_class_and_function_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    undocumented = [
        qualname
        for qualname, obj in public_members(module)
        if not obj.__doc__ and not inherits_docstring(qualname, obj, module)
    ]
    assert undocumented == []


RUNNERS_MODULES = [
    "runners",
    "runners.cli",
    "runners.errors",
    "runners.lease",
    "runners.multiprocess",
    "runners.testing",
    "runners.testing.fixtures",
    "runners.testing.postgres",
    "runners.testing.redis",
    "runners.testing.servers",
    "runners.testing.system",
    "runners.transports",
    "runners.transports.base",
    "runners.transports.kombu",
    "runners.transports.memory",
    "runners.transports.multiprocess",
    "runners.transports.postgres",
    "runners.transports.redis",
    "runners.worker",
]


@pytest.mark.parametrize("module_name", RUNNERS_MODULES)
def test_every_public_member_of_runners_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    undocumented = [
        qualname
        for qualname, obj in public_members(module)
        if not obj.__doc__ and not inherits_docstring(qualname, obj, module)
    ]
    assert undocumented == []


def test_the_library_imports_neither_runners_nor_brokers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, eventsourcing\n"
        "for m in pkgutil.walk_packages(eventsourcing.__path__, 'eventsourcing.'):\n"
        "    if '.tests' not in m.name: importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('runners', 'redis', 'kombu')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
