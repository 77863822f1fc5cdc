"""FARM+PixelCNN++ (paper section 4): the network, its logistic-mixture likelihood, FARM over image
transforms, its objectives, training task, inpainting and samplers."""
