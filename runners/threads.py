"""The command line's runners: workers in threads of one process.

:class:`WorkerThreads` (``eventsourcing-runner run --runner threads``, the default) runs a
:class:`~runners.worker.Worker` per application, each in a thread of its own;
:class:`WorkerLoop` (``--runner single``) runs one worker, in one thread, for every
application named. Either way each worker takes its follower's lease, hears prompts through
``PROMPT_TRANSPORT`` (or polls) and stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.system import System
from runners.exit_codes import EXIT_OK
from runners.worker import Worker

__all__ = ["WorkerLoop", "WorkerThreads"]


class WorkerThreads:
    """A :class:`~runners.worker.Worker` per application, each in a thread of this process.

    ``worker_options`` (``poll_interval``, ``use_lease``, ``progress``, ``metrics``...) are
    given to every worker.
    """

    def __init__(self, system: System, names: Sequence[str], **worker_options: Any) -> None:
        """Prepare the workers for the followers ``names`` of ``system`` (nothing opens)."""
        self.system = system
        self.names = list(names)
        self.workers = [Worker(system, group, **worker_options) for group in self.groups()]

    def groups(self) -> list[list[str]]:
        """The applications of each worker: one each."""
        return [[name] for name in self.names]

    def open(self) -> None:
        """Open every worker; if one fails, close those already open and raise."""
        opened: list[Worker] = []
        try:
            for worker in self.workers:
                worker.open()
                opened.append(worker)
        except BaseException:
            for worker in opened:
                worker.close()
            raise

    def stop(self) -> None:
        """Ask every worker to finish its batch in hand and return (any thread, a handler)."""
        for worker in self.workers:
            worker.stop()

    def run(self) -> int:
        """Run each worker in a thread until all have returned; stop them all when one
        raises, and raise its error."""
        errors: list[BaseException] = []

        def target(worker: Worker) -> None:
            try:
                worker.run()
            except BaseException as error:
                errors.append(error)
                self.stop()

        threads = [threading.Thread(target=target, args=(w,), daemon=True) for w in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins, so the main thread runs signal handlers
        if errors:
            raise errors[0]
        return EXIT_OK


class WorkerLoop(WorkerThreads):
    """One :class:`~runners.worker.Worker`, in one thread, for every application named."""

    def groups(self) -> list[list[str]]:
        """The applications of the one worker: all of them."""
        return [self.names]
