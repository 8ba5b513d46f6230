"""Prompt templates, ingest presets, response presets and taxonomies: data, not code.

This folder ships inside the wheel as the package `metakl.annotations` (metakl/annotations is a link to it in the
source tree); read it through `metakl.resources`, never through a path relative to a source file.
"""
