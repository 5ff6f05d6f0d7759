"""The Dog School: the smallest complete event-sourced application (the README synopsis)."""
