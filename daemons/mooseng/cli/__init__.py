"""`mooseng`, the administration command (see main.py)."""
