"""Data: built-in blueprints as plain Cilium manifests (a package so wheels ship the YAML)."""
