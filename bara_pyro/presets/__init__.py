"""Packaged method presets (one YAML per method); read them with :mod:`bara_pyro.methods`."""
