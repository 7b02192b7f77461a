"""DDMs as folders (``ddmbench.ddm``): `export-ddm` writes this project's DDM in Paris's layout, `import-ddm` reads one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddmbench.cli.app import ParamsOption, app, context, guard


@app.command("export-ddm")
def export_ddm(dest: Annotated[Path, typer.Argument(help="New folder to write the DDM into.")],
               params: ParamsOption = Path("params.yaml")) -> None:
    """Write the trained experts, router and clusters as a DDM folder (config.json + safetensors per network,
    ddm.yaml, clusters.json) that `load_ddm` reads back with bit-identical samples."""
    from ddmbench.pipeline import export_ddm as stage

    guard(lambda: stage.run(*context(params), dest))


@app.command("import-ddm")
def import_ddm(folder: Annotated[Optional[Path], typer.Argument(help="A DDM folder (ddm.yaml + one network folder "
                                                                     "per expert and the router).")] = None,
               params: ParamsOption = Path("params.yaml")) -> None:
    """Import the DDM that ddm.import names (the pipeline's stage), or, given a FOLDER the params do not import,
    check it and print what it holds and how to benchmark it."""
    from ddmbench.pipeline import import_ddm as stage

    def body() -> None:
        if folder is not None and not params.exists():
            stage.describe(folder)
            return
        cfg, paths = context(params)
        imported = cfg.ddm.folder is not None and (paths.root / cfg.ddm.folder).resolve()
        if folder is None or (imported and folder.resolve() == imported):
            stage.run(cfg, paths)
        else:
            stage.describe(folder)

    guard(body)
