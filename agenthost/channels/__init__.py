"""Channels: one protocol a package, each a pure codec and a thin transport."""
