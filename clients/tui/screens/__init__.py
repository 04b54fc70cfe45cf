"""The studio's screens (one per mode) and its modal dialogs."""
