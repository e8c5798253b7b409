"""``python -m repfx_deploy.cli`` runs the command-line interface."""

from repfx_deploy.cli.app import main

main()
