"""Where samples come from: bundled digits and scenes, image folders and manifests, reward pairs."""
