"""Sizes and limits shared by every daemon; changing one changes the on-disk format."""

CHUNK_SIZE = 64 * 1024 * 1024
BLOCK_SIZE = 64 * 1024
BLOCKS_PER_CHUNK = CHUNK_SIZE // BLOCK_SIZE
NAME_MAX = 255
ROOT_INODE = 1
