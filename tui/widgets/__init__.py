"""The cockpit's panes and dialogs."""
