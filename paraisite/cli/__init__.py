"""Command-line interface: ``paraisite <command>``."""
