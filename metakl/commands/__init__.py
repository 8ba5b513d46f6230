"""CLI verbs. Each module defines `register(app)` and keeps its command thin: parse, call the stage, print."""

from metakl.commands import annotate, merge, serve

ALL = [serve, annotate, merge]
