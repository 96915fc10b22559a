"""Deprecated: the command modules moved to :mod:`lowbit.commands`; the modules here are aliases that warn."""
