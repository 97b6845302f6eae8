"""The cockpit's four screens: home (diagnostics, presets, runs, plan), run, compare, preset editor."""
