"""The cockpit's screens: home (diagnostics, presets, runs, plan), run, preset editor."""
