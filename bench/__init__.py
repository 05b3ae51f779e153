"""MooseNG benchmark suite: `python bench/run.py --help`."""
