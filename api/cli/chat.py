"""``tunery chat``: talk to a base, fine-tuned or checkpoint model through a running server's chat completions API,
one message (``-m``) or a conversation (a REPL on the terminal; one turn a line when stdin is piped)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, cast

import typer

from api.cli.common import API_KEY, BASE_URL, api_errors, client, error_message, print_json, stderr

if TYPE_CHECKING:
    from openai import OpenAI, Stream
    from openai.types.chat import ChatCompletionChunk

HELP = "/reset forgets the conversation, /exit (or Ctrl-D) ends it."


def answer(
    c: OpenAI, model: str, messages: list[dict[str, Any]], options: dict[str, Any], stream: bool, as_json: bool
) -> str:
    """One reply to ``messages``, printed as it comes (``stream``) or whole; with ``as_json`` the API's objects
    (a stream's chunks as JSON lines). Returns its text."""
    if not stream:
        completion = c.chat.completions.create(model=model, messages=messages, **options)  # type: ignore[arg-type]
        text = (completion.choices[0].message.content or "") if completion.choices else ""
        if as_json:
            print_json(completion)
        else:
            typer.echo(text)
        return text
    parts = []
    chunks = c.chat.completions.create(model=model, messages=messages, stream=True, **options)  # type: ignore[arg-type]
    for chunk in cast("Stream[ChatCompletionChunk]", chunks):
        if as_json:
            typer.echo(json.dumps(chunk.to_dict()))
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            parts.append(delta)
            if not as_json:
                sys.stdout.write(delta)
                sys.stdout.flush()
    if not as_json:
        typer.echo()
    return "".join(parts)


def chat(
    model: str = typer.Argument(..., help="A base, fine-tuned (ft:...) or checkpoint model, or an alias."),
    message: str = typer.Option(None, "-m", "--message", help="Send this one message, print the reply and exit."),
    system: str = typer.Option(None, "--system", "-s", help="A system message first."),
    stream: bool = typer.Option(False, "--stream/--no-stream", help="Print the reply as it is generated."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="The most tokens of a reply."),
    temperature: float = typer.Option(None, "--temperature", min=0, help="0 for greedy."),
    seed: int = typer.Option(None, "--seed", help="A seed for sampling."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the API's chat completion (with --stream, its chunks as JSON lines)."
    ),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Chat with a model: -m sends one message. Without it, a conversation: a turn per line, a prompt on a terminal.
    /reset forgets it, /exit or Ctrl-D ends it."""
    import openai

    c = client(base_url, api_key)
    options = {
        k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature), ("seed", seed)) if v is not None
    }
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if message is not None:
        with api_errors():
            answer(c, model, [*history, {"role": "user", "content": message}], options, stream, as_json)
        return
    console = stderr()
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[bold]{model}[/bold] at {base_url}. {HELP}")
    while True:
        try:
            line = console.input("[bold green]> [/]") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if not line:  # end of input
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = history[:1] if system else []
            continue
        if not line:
            continue
        if line.startswith("/"):
            console.print(f"unknown command {line.split()[0]}; {HELP}")
            continue
        turn = [*history, {"role": "user", "content": line}]
        try:
            text = answer(c, model, turn, options, stream, as_json)
        except KeyboardInterrupt:
            console.print("[dim](interrupted)[/dim]")
            continue
        except openai.OpenAIError as e:  # an API error ends the turn, not the conversation
            console.print(f"[red]error:[/red] {error_message(e)}")
            if not interactive:
                raise typer.Exit(1) from None
            continue
        history = [*turn, {"role": "assistant", "content": text}]
