"""One module per DVC stage (stage name = CLI command = module name); each exposes ``run(cfg, paths, ...)``."""
