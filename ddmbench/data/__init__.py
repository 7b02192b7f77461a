"""Datasets: sources and checksums, archives, CIFAR-10 batches, image shapes; uint8 tensors (N, C, H, W) out."""
