"""MooseNG: a distributed POSIX file system in the MooseFS tradition."""

__version__ = "0.1.0"
