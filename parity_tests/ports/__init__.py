"""Model pairs written outside the checker, to test it as its users meet it: Flax ports (Linen and NNX)
of torchvision's ResNet-18 and SqueezeNet 1.1 and of torch's recurrent and transformer layers, small
models with the porting mistakes people make as switches, and Hugging Face's PyTorch/Flax twins at
tiny sizes. cases.py lists every pair with what the checker must say about it."""
