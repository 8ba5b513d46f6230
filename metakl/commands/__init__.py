"""CLI verbs. Each module defines `register(app)` and keeps its command thin: parse, call the stage, print."""

from metakl.commands import annotate, env, generate, import_responses, ingest, merge, reward, serve

ALL = [serve, ingest, generate, import_responses, reward, annotate, merge, env]
