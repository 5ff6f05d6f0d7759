"""A producer process for the fault tests: ``python producer.py EVENTS OUT.json``.

Registers dogs and teaches them tricks through ``DogSchool`` (settings from the
environment), one command per event, and writes what it did to OUT.json.
"""

from __future__ import annotations

import json
import logging
import sys

from system_model import DogSchool

DOGS = 50


def main() -> None:
    """Save the events, then write the dog ids and each one's number of tricks."""
    logging.basicConfig(level=logging.WARNING)
    events, out = int(sys.argv[1]), sys.argv[2]
    school = DogSchool()
    dog_ids = [school.register(f"dog{i}") for i in range(DOGS)]
    tricks = dict.fromkeys(dog_ids, 0)
    for n in range(events - DOGS):
        dog_id = dog_ids[n % DOGS]
        school.add_trick(dog_id, "sit")
        tricks[dog_id] += 1
    with open(out, "w") as f:
        json.dump({str(k): v for k, v in tricks.items()}, f)
    school.close()


if __name__ == "__main__":
    main()
