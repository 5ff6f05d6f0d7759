"""Runners of a System: the in-process ones and those that cross process boundaries."""
