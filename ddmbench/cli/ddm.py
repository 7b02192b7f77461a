"""DDMs as folders: `export-ddm` writes this project's trained DDM in Paris's layout (``ddmbench.ddm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddmbench.cli.app import ParamsOption, app, context, guard


@app.command("export-ddm")
def export_ddm(dest: Annotated[Path, typer.Argument(help="New folder to write the DDM into.")],
               params: ParamsOption = Path("params.yaml")) -> None:
    """Write the trained experts, router and clusters as a DDM folder (config.json + safetensors per network,
    ddm.yaml, clusters.json) that `load_ddm` reads back with bit-identical samples."""
    from ddmbench.pipeline import export_ddm as stage

    guard(lambda: stage.run(*context(params), dest))
