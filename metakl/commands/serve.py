"""`metakl serve`: a local vLLM OpenAI-compatible server for tests, demos and the openai backend."""

from __future__ import annotations

import time

import typer

from metakl.llm.options import Dtype


def serve(
    model: str = typer.Argument("smollm2-135m-instruct", help="Embedded model name, HF folder or Hub id."),
    port: int = typer.Option(8000, help="Port on 127.0.0.1 (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    served_name: str = typer.Option(None, help="Model name clients send (default: MODEL)."),
    max_model_len: int = typer.Option(2048, help="Context length."),
    memory_fraction: float = typer.Option(None, help="--gpu-memory-utilization (on CPU: share of RAM; default 0.3 there)."),
    startup_timeout: float = typer.Option(600.0, help="Seconds to wait for the server to answer."),
    dtype: Dtype = typer.Option(Dtype.auto, case_sensitive=False, help="auto: bfloat16 on a GPU and on CPUs with "
                                "native bfloat16 (avx512_bf16/amx_bf16), else float32."),
) -> None:
    """Start a vLLM OpenAI-compatible server, print its URL, and stop it cleanly on Ctrl-C, SIGTERM or SIGHUP.

    Example: `metakl serve smollm2-135m-instruct --port 8011`, then
    `metakl generate ... --backend openai --base-url http://127.0.0.1:8011/v1`.
    """
    from metakl.llm.serve import VLLMServer, check_port_free

    if port:
        check_port_free(host, port)  # before anything is printed or loaded (start() checks again)
    server = VLLMServer(
        model,
        served_name=served_name,
        host=host,
        port=port or None,
        max_model_len=max_model_len,
        memory_fraction=memory_fraction,
        startup_timeout=startup_timeout,
        dtype=dtype.value,
    )
    typer.echo(f"starting vLLM for {model} in {server.resolved_dtype} (log: {server.log_path}) ...", err=True)
    with server:
        typer.echo(server.url)
        typer.echo(f"serving '{server.served_name}'; press Ctrl-C (or send SIGTERM) to stop", err=True)
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            typer.echo("stopping ...", err=True)
            return
    typer.echo(f"server exited; last log lines:\n{server.log_tail()}", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
