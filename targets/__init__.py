"""Target definitions (TOML data); the loader is infoq_deploy.core.targets."""
