"""`python -m metakl.demo`: the embedded SmolLM2 answers a few prompts through each backend, with tokens/s.

Examples:
    python -m metakl.demo                                  # transformers, vllm (offline), openai (own server)
    python -m metakl.demo --backends openai --base-url http://127.0.0.1:8011/v1
    python -m metakl.demo --backends transformers --max-tokens 32
    python -m metakl.demo --dtype float32                  # dtype auto: bfloat16 only where the CPU has it natively
"""

from __future__ import annotations

import sys
import textwrap
from typing import Annotated, Optional

import typer

from metakl.commands._llm_options import DEFAULT_MODEL, build_backend, format_stats
from metakl.errors import UserError, run_cli
from metakl.hardware import announce_dtype, auto_dtype, check_dtype, cuda_available
from metakl.llm import BACKENDS, ChatRequest

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "explanation": {"type": "string", "maxLength": 80}},
    "required": ["answer", "explanation"],
    "additionalProperties": False,
}


def demo_requests(max_tokens: int) -> list[ChatRequest]:
    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    return [
        ChatRequest(messages=user("What is 12 + 30? Answer briefly."), max_tokens=max_tokens, tag="greedy"),
        ChatRequest(messages=user("Give one tip for learning to cook."), n=2, temperature=0.8, seed=1,
                    max_tokens=max_tokens, tag="two samples"),
        ChatRequest(messages=user("Why is the sky blue? One sentence."), max_tokens=max_tokens, tag="greedy"),
        ChatRequest(messages=user("What is 7 times 6? Reply as JSON."), json_schema=ANSWER_SCHEMA,
                    max_tokens=max_tokens + 16, tag="JSON schema"),
    ]


def run_backend(kind: str, model: str, base_url: str | None, max_tokens: int, use_cache: bool,
                dtype: str = "auto") -> None:
    typer.echo(f"\n== {kind} ==")
    # In-process backends load the model in `dtype`; torch threads follow metakl.hardware.torch_threads() (1 while
    # the demo's own vLLM server runs on CPU, so the two do not fight for the cores).
    options = {"dtype": dtype} if kind != "openai" else {}
    with build_backend(kind, model, base_url, no_cache=not use_cache, **options) as llm:
        for result in llm.generate_all(demo_requests(max_tokens), progress=False):
            question = result.request.messages[-1]["content"]
            typer.echo(f"Q ({result.request.tag}): {question}")
            if not result.ok:
                typer.echo(f"  error: {result.error}")
                continue
            for text in result.completion.texts:
                typer.echo(textwrap.indent(textwrap.shorten(" ".join(text.split()), 160) or "(empty)", "  A: "))
        typer.echo(f"{kind}: {format_stats(llm.stats)}")


def demo(
    backends: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(BACKENDS)}.")] = ",".join(BACKENDS),
    model: Annotated[str, typer.Option(help="Embedded model name or HF folder (openai: the served name).")] = DEFAULT_MODEL,
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint for the openai backend (default: a server the demo starts).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 32,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use the request cache (off: honest tok/s).")] = False,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 for the in-process backends and "
                                            "the demo's own server (auto: bfloat16 only with native support).")] = "auto",
) -> None:
    """The embedded model answering a few prompts through each backend, with tokens/s.

    The openai backend talks to --base-url when given, otherwise to a vLLM server this demo starts and stops.
    """
    kinds = [k.strip() for k in backends.split(",") if k.strip()]
    for kind in kinds:
        if kind not in BACKENDS:
            raise UserError(f"--backends: unknown backend '{kind}'; expected some of: {', '.join(BACKENDS)}")
    check_dtype(dtype)
    if kinds != ["openai"] or not base_url:  # a model is loaded here: say which dtype and why
        if dtype == "auto":  # said once, here on stdout; the backends and the server then say nothing more
            announce_dtype(auto_dtype("cuda" if cuda_available() else "cpu"), file=sys.stdout)
        else:
            typer.echo(f"dtype: {dtype}")
    server = None
    if "openai" in kinds and not base_url:
        from metakl.llm.serve import VLLMServer

        # Started first, so that it boots while the in-process backends run.
        typer.echo("starting a local vLLM server for the openai backend (in the background) ...")
        server = VLLMServer(model, dtype=dtype).start(wait=False)
    try:
        for kind in sorted(kinds, key=lambda k: k == "vllm"):  # the offline engine last, after the server stops
            if kind == "openai" and server is not None:
                server.wait_ready()
                run_backend(kind, server.served_name, server.url, max_tokens, cache)
                server.stop()
            else:
                run_backend(kind, model, base_url if kind == "openai" else None, max_tokens, cache, dtype)
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(demo)
    run_cli(app)


if __name__ == "__main__":  # the vllm backend spawns processes: keep this guard
    main()
