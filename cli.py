"""Thin entry point: ``python cli.py ...`` is the same as ``repfx-deploy ...``."""

from repfx_deploy.cli.app import main

if __name__ == "__main__":
    main()
