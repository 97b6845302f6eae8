"""The cockpit (Textual): a viewer and remote control of runs. app.py's make_app, the screens and
their widgets, fed by a run's event log (feed.py, model.py, series.py). Never imports torch, nor
anything under engine/train/: the engine trains in its own process."""
