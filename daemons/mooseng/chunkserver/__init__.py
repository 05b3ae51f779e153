"""The chunkserver: chunk files on local disks, served over rpc.py, reported to the master."""
