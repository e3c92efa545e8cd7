"""Features shared by training and the live daemon: packets and flows.

Nothing here imports training code; the daemon loads these modules with an
exported model and must get the same numbers the model was trained on.
"""
