"""Fuel consumption of 392 cars (UCI Auto MPG, shipped in mlxtend): numeric measurements plus two categorical
columns learned as embeddings, read in dict batches by a training step of our own."""
