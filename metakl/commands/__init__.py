"""CLI verbs. Each module defines `register(app)` and keeps its command thin: parse, call the stage, print."""

from metakl.commands import (annotate, decontaminate, dedup, env, filter, generate, import_responses, ingest, merge,
                             publish, review, reward, run, score, serve)

ALL = [serve, ingest, generate, import_responses, reward, annotate, merge, score, dedup, decontaminate, filter, publish, review, run, env]
