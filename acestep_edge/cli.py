"""The `acestep-edge` console script: runtime commands and, when the export extra is installed, export."""

from __future__ import annotations

import importlib

import click

# name → (module, attribute). Modules load only when their command runs (or its help is shown),
# so a runtime-only install never imports torch.
COMMANDS = {
    "demo": ("acestep_edge.runtime.cli", "demo_command"),
    "generate": ("acestep_edge.runtime.cli", "generate_command"),
    "export": ("acestep_edge.export.cli", "export_command"),
    "inspect": ("acestep_edge.export.cli", "inspect_command"),
    "serve": ("acestep_edge.server.cli", "serve_command"),
    "bench": ("acestep_edge.bench.cli", "bench_command"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acestep-edge")
def main():
    """Offline ACE-Step v1.5 XL Base: export the model to an ONNX bundle, render Runware requests from it.

    \b
    Start here:
      acestep-edge demo                       render an example on the tiny bundled model
      acestep-edge generate REQUEST.json --bundle BUNDLE
      acestep-edge export --checkpoint CKPT --out BUNDLE   (needs the [export] extra)
      acestep-edge inspect BUNDLE --verify
      acestep-edge serve --bundle BUNDLE           HTTP endpoint + web studio (needs the [server] extra)
      acestep-edge bench --bundle BUNDLE [--torch]   time renders stage by stage
    """


if __name__ == "__main__":
    main()
