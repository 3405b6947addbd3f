"""Studies: declarative ablations (``ablations/*.yaml``) expanded into runs, trained, and reported."""
