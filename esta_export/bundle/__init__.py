"""Deployable bundles: writer, manifest schema, archives, and remote profiling over SSH.

The runtime that runs a bundle on a device is :mod:`esta_export.runtime` (no torch); the bundle
carries a copy of it. Import the pieces from their modules (``esta_export.bundle.writer`` ...);
this package import stays light.
"""
