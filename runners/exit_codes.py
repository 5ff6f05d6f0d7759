"""Every exit code of the runtime (the runner CLI, its workers and their child processes).

An orchestrator (systemd, Kubernetes, a supervisor) reads these: 0 is a clean stop, 3 a
policy that needs a fix before the follower can go on, 4 a database to bring up, 5 a
forced stop whose batch was rolled back.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_SETTINGS",
    "EXIT_ERROR",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_PROCESSING_ERROR",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
]

EXIT_OK = 0  # stopped cleanly (SIGTERM, SIGINT, or the work was done)
EXIT_ERROR = 1  # an unexpected error (its traceback is logged)
EXIT_USAGE = 2  # bad input: an option, SYSTEM, an application name, an environment variable
EXIT_BAD_SETTINGS = EXIT_USAGE  # a child process found its settings wrong (a bad PROMPT_TRANSPORT)
EXIT_PROCESSING_ERROR = 3  # a policy (or decoding) error stopped the worker; its batch not recorded
EXIT_UNREACHABLE = 4  # a database could not be reached at start-up
EXIT_FORCED = 5  # a second SIGTERM/SIGINT: exited at once, the batch in hand rolled back
EXIT_REFUSED = 6  # an operation on a follower was refused (unsafe now), changing nothing
