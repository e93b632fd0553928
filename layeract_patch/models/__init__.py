"""The paper's models, any activation of the registry; importing this registers them with timm.

    timm.create_model("cifar_resnet20", act="silu", norm="bn", num_classes=10)
    timm.create_model("layeract_cnn", act="la_silu")
"""
from .cifar_resnet import (BasicBlock, CifarResNet, cifar_resnet, cifar_resnet20, cifar_resnet32, cifar_resnet44,
                           cifar_resnet56, cifar_resnet110)
from .layers import NORMS
from .paper_cnn import PaperCNN, layeract_cnn, paper_cnn

MODELS = {"cifar_resnet": cifar_resnet, "paper_cnn": paper_cnn}

__all__ = ["CifarResNet", "BasicBlock", "PaperCNN", "cifar_resnet", "paper_cnn", "cifar_resnet20", "cifar_resnet32",
           "cifar_resnet44", "cifar_resnet56", "cifar_resnet110", "layeract_cnn", "NORMS", "MODELS"]
