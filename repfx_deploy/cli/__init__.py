"""Command-line interface (typer). ``repfx_deploy.cli.app:main`` is the console script."""
