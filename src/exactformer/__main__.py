"""``python -m exactformer`` runs the command line."""

from .cli import main

main()
