"""The three-stage bidirectional-flow model: features, networks, training,
calibration and export.

`model.features` and `model.artifact` are shared with the daemon; the rest is
training code the daemon never imports.
"""
