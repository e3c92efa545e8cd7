"""The bflow sensor: reads Zeek logs, scores them and writes notices.

Everything on the live path lives here. The daemon loads an exported model
file and never imports training code from `model`.
"""

__version__ = "0.1.0"
