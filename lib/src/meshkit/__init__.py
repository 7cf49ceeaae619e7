"""Shared library: HBONE, identity and TLS, xDS core, settings, logging, metrics, drain, netns helpers."""
