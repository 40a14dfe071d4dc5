"""Subcommands of the `extender` CLI that drive the webhook itself."""
