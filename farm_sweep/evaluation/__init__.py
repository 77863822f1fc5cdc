"""Evaluating trained models: the end-of-trial inpainting and speed-quality evaluation, the sample-quality
scorers (the CIFAR-10 classifier among them) and the paper's Table 1."""
