"""`acestep-edge fleet config`: the Serve config file (and KubeRay RayService) for what `fleet` deploys."""

from __future__ import annotations

import dataclasses

import yaml

from .app import IMPORT_PATH

IMAGE = "acestep-edge-fleet:latest"  # rayproject/ray:2.60.0-py311(-gpu) with acestep-edge[fleet]: docs/fleet.md


def serve_config(config, host: str = "0.0.0.0", port: int = 8000) -> dict:
    """A document `serve deploy` accepts (ray.serve.schema.ServeDeploySchema)."""
    args = {k: v for k, v in dataclasses.asdict(config).items() if k != "step_delay" or v}
    deployments = [{"name": name, **options} for name, options in config.deployments().items()]
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port},
            "applications": [{"name": config.app_name, "route_prefix": "/", "import_path": IMPORT_PATH,
                              "args": args, "deployments": deployments}]}


def rayservice(document: dict, config, image: str = IMAGE) -> dict:
    """A KubeRay RayService running `document`, with one shared volume for the bundle and the out-dir."""
    gpu = config.provider in ("cuda", "tensorrt")
    mounts = [{"name": "acestep-data", "mountPath": "/data"}]
    volumes = [{"name": "acestep-data", "persistentVolumeClaim": {"claimName": "acestep-data"}}]
    env = [{"name": "ACESTEP_EDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "acestep-edge",
                                                                            "key": "api-key"}}},
           {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]

    def pod(cpu: str, memory: str, gpus: int) -> dict:
        limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": gpus} if gpus else {})}
        return {"spec": {"containers": [{"name": "ray", "image": image, "env": env, "volumeMounts": mounts,
                                         "resources": {"limits": limits, "requests": limits}}],
                         "volumes": volumes}}

    workers = max(1, config.max_replicas)
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "acestep-edge"},
            "spec": {"serveConfigV2": to_yaml({"applications": document["applications"]}),
                     "rayClusterConfig": {
                         "rayVersion": "2.60.0",
                         "enableInTreeAutoscaling": True,  # Serve asks for replicas, KubeRay adds pods
                         "headGroupSpec": {"rayStartParams": {"num-cpus": "0"},  # no renders on the head
                                           "template": pod("2", "4Gi", 0)},
                         "workerGroupSpecs": [{"groupName": "renderers", "replicas": config.min_replicas,
                                               "minReplicas": config.min_replicas, "maxReplicas": workers,
                                               "rayStartParams": {},
                                               "template": pod(str(max(2, config.threads + 1)),
                                                               "24Gi" if gpu else "8Gi", 1 if gpu else 0)}]}}}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # each pod spelled out, no &id anchors
        return True


def _block(dumper, text: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _block)


def to_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)
