"""CLI verbs. Each module defines `register(app)` and keeps its command thin: parse, call the stage, print."""

from metakl.commands import ingest, serve

ALL = [serve, ingest]
