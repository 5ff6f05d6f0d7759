"""Examples built on the eventsourcing library."""
