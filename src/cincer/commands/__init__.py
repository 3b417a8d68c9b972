"""CLI sub-commands, one module each (see ``cincer.cli.COMMANDS``)."""
