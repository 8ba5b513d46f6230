"""CLI verbs. Each module defines `register(app)` and keeps its command thin: parse, call the stage, print."""

from metakl.commands import import_responses, serve

ALL = [serve, import_responses]
