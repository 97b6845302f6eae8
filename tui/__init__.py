"""The Textual cockpit. Never imports torch: the engine runs in its own process."""
