"""Tests of eventsourcing.dcb, with real servers, against 9.5.6's own test cases too."""
