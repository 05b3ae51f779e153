"""The MooseNG client: a Python library (fs.Client) and the FUSE mount built on it."""
