"""The study specs (one YAML per paper table) and the profiles, shipped as package data (resattn.ablations)."""
