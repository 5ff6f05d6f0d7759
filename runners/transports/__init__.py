"""Prompt transports."""
