"""The registry as a named, detached Ray actor: every replica of one fleet finds the same one by name."""

from __future__ import annotations

import ray

from .registry import JobRegistry

NAMESPACE = "acestep-edge"


def registry_name(app_name: str) -> str:
    return f"jobs-{app_name}"


def registry(name: str):
    """The fleet's registry actor, created by whichever replica asks first (get_if_exists makes that race-free).

    Detached: it outlives any one ingress or renderer replica; `acestep-edge fleet` kills it on exit
    (a `serve deploy` user kills it with the app: docs/fleet.md)."""
    actor = ray.remote(JobRegistry).options(name=name, namespace=NAMESPACE, lifetime="detached",
                                            get_if_exists=True, num_cpus=0, max_restarts=0)
    return actor.remote()


def kill_registry(name: str) -> None:
    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:  # never created
        pass
