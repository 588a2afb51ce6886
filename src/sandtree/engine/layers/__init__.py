"""The layer store: image layers on disk, overlay mounts and reading images without a sandbox."""
