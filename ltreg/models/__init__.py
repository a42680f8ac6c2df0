"""Models: timm backbones (plus CIFAR ResNets registered into timm) with LT heads."""
