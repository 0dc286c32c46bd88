"""`wtb serve`: the HTTP API on a local Ray instance (or a cluster)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

import typer

from wtb_ray.cli.common import DbOpt, app, err, guarded
from wtb_ray.config import Settings


@app.command("serve")
@guarded
def serve_api(host: Annotated[str | None, typer.Option(help="Default WTB_API_HOST.")] = None,
              port: Annotated[int | None, typer.Option(help="Default WTB_API_PORT.")] = None,
              address: Annotated[str | None, typer.Option(
                  help="Ray cluster (auto or HOST:PORT); default: start a local instance.")
              ] = None,
              db: DbOpt = None) -> None:
    """Serve the HTTP API (Ray Serve) until interrupted."""
    from serve.auth import resolve_token, token_path

    updates = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    settings = Settings().with_database(db).model_copy(update=updates)
    resolve_token(settings)  # refuses a non-loopback host without a token, before anything
    from actors import client
    from serve.deploy import deploy

    client.connect(address)
    # `kill` (and a service manager's stop) shut it down as Ctrl-C does, from here on: also
    # while deploying, which waits for the replica (and the orchestrator it boots). SIGINT
    # is left as it came: a shell starting `wtb serve &` without job control ignores it on
    # purpose.
    stopping = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        deploy(settings)
        url = f"http://{settings.api_host}:{settings.api_port}"
        where = ("WTB_API_TOKEN" if settings.api_token is not None
                 else str(token_path(settings)))
        err.print(f"WTB API at {url} (docs: {url}/docs); bearer token in {where}",
                  highlight=False)
        while True:
            time.sleep(3600)
    except BaseException as exc:
        # Raised inside a library (pydantic's serializer, say), the interrupt may come out
        # wrapped in another exception: the flag tells a stop from a failure.
        if not (stopping.is_set() or isinstance(exc, KeyboardInterrupt)):
            raise
        from ray import serve

        serve.shutdown()
        err.print("WTB API stopped", highlight=False)
