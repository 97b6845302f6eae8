"""Headless core of gpt2-cockpit: models, data, training, runs, diagnostics.

Nothing in this package imports textual. Modules that the cockpit imports
(config, presets, paths, events, runs, control, planner, hardware) never import
torch at module level either, so the viewer process stays light.
"""
