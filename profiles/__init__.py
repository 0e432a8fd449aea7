"""Hardware profiles (TOML data shipped in the wheel); loaded by profiles.cpu."""
