"""trackport: move ML experiment history between trackers, losslessly.

Importing trackport imports no tracker SDK; connectors load theirs on use.
"""

__version__ = "0.1.0"
