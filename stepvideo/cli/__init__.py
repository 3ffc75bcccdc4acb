"""`stepvideo`: the command line. Every subcommand has --help; user mistakes print one clear line.

One module per command group (`data`, `run`: params/stage/flow, `models`: generate/model/compat/
release, `eval`, `dpo`: dpo + label, `registry`, `lora`, `plan`: the memory planner); `_common` holds the user-error wrapper and the
seam to the Prefect flows. This module only assembles the root app (the `stepvideo` entry point).
"""

from __future__ import annotations

import typer

from stepvideo.cli.data import data_app
from stepvideo.cli.dpo import dpo_app, label_app
from stepvideo.cli.eval import eval_app
from stepvideo.cli.lora import lora_app
from stepvideo.cli.models import compat_app, generate_cmd, model_app, release_app
from stepvideo.cli.plan import plan_cmd
from stepvideo.cli.registry import registry_app
from stepvideo.cli.run import flow_app, params_app, stage

app = typer.Typer(help="stepvideo: train, evaluate and ship Step-Video-T2V-class text-to-video models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for name, group in (("data", data_app), ("params", params_app), ("flow", flow_app), ("compat", compat_app),
                    ("model", model_app), ("eval", eval_app), ("release", release_app), ("dpo", dpo_app),
                    ("label", label_app), ("registry", registry_app), ("lora", lora_app)):
    app.add_typer(group, name=name)
app.command("stage")(stage)
app.command("generate")(generate_cmd)
app.command("plan")(plan_cmd)


def main() -> None:  # pragma: no cover
    app()


__all__ = ["app", "main"]
