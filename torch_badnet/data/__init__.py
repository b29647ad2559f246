"""Data in: lab .h5 sets, images, set names, file checks, atomic writes and hashing (files -> tensors)."""
