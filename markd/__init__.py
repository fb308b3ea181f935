"""markd: an open, drop-in mongocryptd (query analysis for MongoDB automatic encryption)."""

__version__ = "0.1.0"
