"""The chunkserver: chunk files on local disks, served over gRPC, reported to the master."""
