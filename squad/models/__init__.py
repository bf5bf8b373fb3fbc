"""Models and bundles: the embedded base models, local model directories, and squad bundles
(a manifest plus safetensors artifacts)."""
from squad.models.bundle import Manifest, read_manifest, resolve_bundle, write_manifest
from squad.models.registry import cache_dir, resolve

__all__ = ["Manifest", "cache_dir", "read_manifest", "resolve", "resolve_bundle", "write_manifest"]
