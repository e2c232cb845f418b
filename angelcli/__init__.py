"""angel: a command-line toolkit for AntAngelMed (BailingMoeV2).

Importing this package must stay cheap: no torch, no triton, no transformers. Heavy modules are
imported inside the commands that need them, so `angel --help` starts instantly.
"""

__version__ = "0.1.0"
