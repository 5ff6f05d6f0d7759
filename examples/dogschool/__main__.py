"""Run the Dog School on a SQLite file and print what happened: ``python -m examples.dogschool``."""

from __future__ import annotations

import os
import sys
import tempfile

from examples.dogschool.application import DogSchool


def main() -> int:
    """Register a dog, teach it tricks, read it back, and list the stored notifications."""
    with tempfile.TemporaryDirectory() as tmp:
        dbname = os.path.join(tmp, "dogschool.sqlite")
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": dbname}
        with DogSchool(env=env) as school:
            dog_id = school.register_dog("Fido")
            school.add_trick(dog_id, "roll over")
            school.add_trick(dog_id, "play dead")
            print(f"Stored events in {dbname} (SQLite, synchronous=FULL)")
            print(f"Dog {dog_id}: {school.get_dog(dog_id)}")
            for n in school.notification_log.select(start=1, limit=10):
                print(f"  notification {n.id}: {n.topic} v{n.originator_version}")
        with DogSchool(env=env) as reopened:
            print(f"Reopened the database: {reopened.get_dog(dog_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
