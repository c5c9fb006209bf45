"""The fleet's Serve application: an ingress (the server's app) and an autoscaled renderer deployment.

`build(args)` is also the import path a Serve config file names (`acestep-edge fleet config`), so
`serve deploy` and `acestep-edge fleet` deploy the same thing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ray import serve

from .ingress import Ingress
from .registry_actor import registry_name
from .renderer import Renderer

APP_NAME = "acestep-edge"
IMPORT_PATH = "acestep_edge.fleet.app:build"


@dataclass
class FleetConfig:
    bundle: str
    out_dir: str = "acestep-edge-renders"
    provider: str = "cpu"
    threads: int = 1  # intra-op threads per renderer replica; on CPU also its num_cpus
    gpus_per_replica: float = 1.0  # on cuda/tensorrt: each replica holds this share of a GPU
    min_replicas: int = 1
    max_replicas: int = 2
    ingress_replicas: int = 1
    queue: int = 16
    drain_seconds: float = 30.0
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 60.0
    metrics_interval_s: float = 1.0  # how often queue lengths reach the autoscaler (Serve's default: 10 s)
    look_back_period_s: float = 5.0  # the window they are averaged over (default 30 s): renders are long
    lora_dir: str | None = None
    app_name: str = APP_NAME
    server: dict = field(default_factory=dict)  # ServerOptions fields: api_key, allow_dirs, public_url, ...
    step_delay: float = 0.0  # test-only (ACESTEP_EDGE_TEST_STEP_DELAY): seconds per render step

    def __post_init__(self):
        # Replicas run in other processes (other machines): paths must not depend on a working directory.
        self.bundle = os.path.abspath(self.bundle)
        self.out_dir = os.path.abspath(self.out_dir)
        self.lora_dir = os.path.abspath(self.lora_dir) if self.lora_dir else None
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"--min-replicas {self.min_replicas} / --max-replicas {self.max_replicas}: need "
                             "1 <= min <= max")

    def renderer_actor_options(self) -> dict:
        if self.provider in ("cuda", "tensorrt"):
            return {"num_gpus": self.gpus_per_replica, "num_cpus": 1}
        return {"num_cpus": self.threads}

    def deployments(self) -> dict:
        """The deployment options, by deployment name (shared with the config file writer)."""
        return {
            "renderer": {
                "max_ongoing_requests": 1,  # one render at a time per device; the rest wait in Serve's queue
                "autoscaling_config": {"min_replicas": self.min_replicas, "initial_replicas": self.min_replicas,
                                       "max_replicas": self.max_replicas,
                                       # queued + running per replica: above 1, a queue is building
                                       "target_ongoing_requests": 1,
                                       "upscale_delay_s": self.upscale_delay_s,
                                       "downscale_delay_s": self.downscale_delay_s,
                                       "metrics_interval_s": self.metrics_interval_s,
                                       "look_back_period_s": self.look_back_period_s},
                "ray_actor_options": self.renderer_actor_options(),
                "graceful_shutdown_timeout_s": self.drain_seconds + 10,
            },
            "ingress": {
                "num_replicas": self.ingress_replicas,
                "max_ongoing_requests": 1000,  # waits: sync renders, SSE and WebSocket clients
                "ray_actor_options": {"num_cpus": 0},  # asyncio only; the CPUs go to renderers
                "graceful_shutdown_timeout_s": self.drain_seconds + 10,
            },
        }

    def fleet_info(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "minReplicas": self.min_replicas,
                "maxReplicas": self.max_replicas, "ingressReplicas": self.ingress_replicas}


def build_app(config: FleetConfig):
    """The bound Serve application for `config`."""
    name = registry_name(config.app_name)
    options = config.deployments()
    renderer = serve.deployment(Renderer, name="renderer", **options["renderer"]).bind(
        name, config.bundle, config.provider, config.threads, config.out_dir, config.lora_dir, config.step_delay)
    ingress = serve.deployment(serve.ingress()(Ingress), name="ingress", **options["ingress"])
    server = {**config.server, "lora_dir": config.lora_dir}
    return ingress.bind(renderer, config.bundle, config.out_dir, name, config.queue, server, config.fleet_info())


def build(args: dict):
    """Serve's application builder (`import_path: acestep_edge.fleet.app:build`, `args:` the FleetConfig fields)."""
    known = {f.name for f in dataclasses.fields(FleetConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown fleet argument {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return build_app(FleetConfig(**args))
