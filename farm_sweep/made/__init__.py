"""FARM+MADE (paper section 3): the network, its likelihood, its training task, inpainting and samplers."""
