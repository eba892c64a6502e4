"""Tool families, each a registry of small classes with one verb (see DESIGN.md)."""
