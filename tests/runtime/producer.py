"""A producer process for the fault tests: ``python producer.py EVENTS OUT.json``.

Registers dogs and teaches them tricks through ``DogSchool`` (settings from the
environment), one command per event, and writes what it did to OUT.json.
"""

from __future__ import annotations

import json
import logging
import sys

from system_model import DogSchool

EVENTS_PER_DOG = 100  # a command replays its dog: keep each dog's history short


def main() -> None:
    """Save the events, then write the dog ids and each one's number of tricks."""
    logging.basicConfig(level=logging.WARNING)
    events, out = int(sys.argv[1]), sys.argv[2]
    school = DogSchool()
    dogs = max(1, events // EVENTS_PER_DOG)
    dog_ids = [school.register(f"dog{i}") for i in range(dogs)]
    tricks = dict.fromkeys(dog_ids, 0)
    for n in range(events - dogs):
        dog_id = dog_ids[n % dogs]
        school.add_trick(dog_id, "sit")
        tricks[dog_id] += 1
    with open(out, "w") as f:
        json.dump({str(k): v for k, v in tricks.items()}, f)
    school.close()


if __name__ == "__main__":
    main()
