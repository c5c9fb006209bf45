"""The `acestep-edge` console script: runtime commands and, when the export extra is installed, export."""

from __future__ import annotations

import importlib

import click

# name → (module, attribute). Modules load only when their command runs (or its help is shown),
# so a runtime-only install never imports torch.
COMMANDS = {
    "demo": ("acestep_edge.demo", "demo_command"),
    "generate": ("acestep_edge.runtime.cli", "generate_command"),
    "export": ("acestep_edge.export.cli", "export_command"),
    "inspect": ("acestep_edge.export.cli", "inspect_command"),
    "serve": ("acestep_edge.server.cli", "serve_command"),
    "bench": ("acestep_edge.bench.cli", "bench_command"),
    "fleet": ("acestep_edge.fleet.cli", "fleet_command"),
}


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells expect after Ctrl-C


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1; nothing was written (outputs are atomic).
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acestep-edge")
@click.pass_context
def main(ctx):
    """Offline ACE-Step v1.5 XL Base: export the model to an ONNX bundle, render Runware requests from it.

    \b
    Start here:
      acestep-edge demo                       render an example on the tiny bundled model
      acestep-edge generate REQUEST.json --bundle BUNDLE
      acestep-edge export --checkpoint CKPT --out BUNDLE   (needs the [export] extra)
      acestep-edge inspect BUNDLE --verify
      acestep-edge serve --bundle BUNDLE           HTTP endpoint + web studio (needs the [server] extra)
      acestep-edge bench --bundle BUNDLE [--torch]   time renders stage by stage
      acestep-edge fleet --bundle BUNDLE           the same endpoint on Ray Serve replicas ([fleet] extra)
    """
    if ctx.invoked_subcommand is None:  # no command: the help, on stdout, exit 0
        click.echo(ctx.get_help())


if __name__ == "__main__":
    main()
