"""SLEM / LEM networks for LCAO quantum operators (torch only)."""
