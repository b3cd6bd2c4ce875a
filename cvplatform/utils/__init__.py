"""Small shared helpers (hashing, JSON, paths). No heavy imports here."""
