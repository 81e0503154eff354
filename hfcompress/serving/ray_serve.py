"""The ``hfcompress serve`` app as a Ray Serve deployment with replicas (the ``ray`` extra: ``pip install "hfcompress[ray]"``).

Each replica builds the same FastAPI app as ``hfcompress serve`` (:func:`create_app`: the same
endpoints, batching, limits and metrics) when Ray starts it, so nothing that holds an ONNX Runtime
session is pickled; Ray Serve's proxy spreads requests over the replicas, and every answer names
its replica in an ``X-Replica-Id`` header. ``ray.init()`` joins the cluster of ``RAY_ADDRESS``
when it is set, and starts a local Ray instance otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

APP_NAME = "hfcompress"
REPLICA_HEADER = "X-Replica-Id"


def ray_missing() -> Optional[str]:
    """Why Ray Serve cannot be used here, or None when it can."""
    from ..utils.imports import module_missing

    return module_missing("ray.serve", "Ray Serve", 'pip install "hfcompress[ray]"')


def build_deployment(model_path: str | Path, config, replicas: int = 2, replica_cpus: float = 1.0):
    """A bound Ray Serve application: ``replicas`` copies of ``create_app(model_path, config)``, each reserving ``replica_cpus`` CPUs."""
    if replicas < 1 or replica_cpus <= 0:
        raise ConfigError(f"Ray Serve needs at least 1 replica and a positive CPU share, got {replicas} replicas of {replica_cpus} CPUs")
    if missing := ray_missing():
        raise ConfigError(missing)
    from ray import serve

    @serve.ingress()  # the app is built on each replica by __serve_build_asgi_app__, not pickled from here
    class HFCompressServer:
        def __init__(self, model_path: str, config):
            self.model_path, self.config = model_path, config

        def __serve_build_asgi_app__(self):
            from .app import create_app

            app = create_app(self.model_path, self.config)
            replica = serve.get_replica_context().replica_id.unique_id

            @app.middleware("http")
            async def name_the_replica(request, call_next):
                response = await call_next(request)
                response.headers[REPLICA_HEADER] = replica
                return response

            return app

    deployment = serve.deployment(HFCompressServer, name="HFCompressServer", num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus})
    return deployment.bind(str(model_path), config)


def start_ray_serve(model_path: str | Path, config, replicas: int, host: str, port: int, replica_cpus: float = 1.0):
    """Start Ray Serve's HTTP proxy on ``host:port`` and deploy ``replicas`` replicas of the app; returns once they are running."""
    application = build_deployment(model_path, config, replicas, replica_cpus)
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(application, name=APP_NAME, route_prefix="/")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hfcompress serve`` options that run it on Ray Serve instead of uvicorn."""
    group = parser.add_argument_group("Ray Serve", "Run the same app as a Ray Serve deployment (needs the ray extra).")
    group.add_argument("--ray-replicas", type=int, default=None, metavar="N",
                       help="Serve with N Ray Serve replicas behind Ray's HTTP proxy on --host/--port (joins RAY_ADDRESS's cluster, else starts a local Ray).")
    group.add_argument("--ray-replica-cpus", type=float, default=1.0, metavar="CPUS", help="CPUs Ray reserves for each replica (default 1).")


def serve_with_ray(args, config) -> int:
    """``hfcompress serve --ray-replicas N``: deploy, then block until interrupted, and shut Ray Serve down."""
    import time

    start_ray_serve(args.model, config, args.ray_replicas, args.host, args.port, args.ray_replica_cpus)
    print(f"Ray Serve: {args.ray_replicas} replicas of {args.model} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        from ray import serve

        serve.shutdown()
