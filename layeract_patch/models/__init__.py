"""The paper's models and two more CIFAR models, any activation of the registry; importing this registers them
with timm.

    timm.create_model("cifar_resnet20", act="silu", norm="bn", num_classes=10)
    timm.create_model("layeract_cnn", act="la_silu", init="torch")
    timm.create_model("cifar_convnext", act="la_gelu")       # a small ConvNeXt, GELU by default (cifar_convnext.py)
    timm.create_model("cifar_mobilenetv3", act="hardsilu")   # timm's mobilenetv3_small_100 as it is (timm_cifar.py)
    timm.create_model("cifar_resnet20", features_only=True)   # stem + 3 stage outputs
    cifar_resnet(44, act="la_silu", norm="none", init="torch")  # the same as timm.create_model("cifar_resnet44", ...)

Initialisation (`init=`), which experiment uses which:
    "he"     Kaiming normal, convs without bias in front of a norm. The default, and what the paper's
             normalized experiments (Tables 2-5, BN or LN) are run with here: with a norm after every conv
             the init hardly matters, and He init is the CIFAR ResNet convention.
             Also the 15-conv CNN without normalization (Table 2, "no norm"): with PyTorch's default init
             neither SiLU nor LA-SiLU moves off chance there, with He init both learn (issue 13's probe).
    "torch"  PyTorch's default reset_parameters() and biased convs, as in the LayerAct authors' code. Used
             for the ResNets WITHOUT normalization (lr 0.01; the authors' appendix: ResNet-32/44, SiLU vs
             LA-SiLU): with He init both diverge to NaN within a few steps, with the authors' init SiLU stays
             at chance (as in their table) and LA-SiLU learns.
             For cifar_mobilenetv3 "torch" is its only init and means timm's own (the model is timm's as built).
"""
from .cifar_resnet import (BasicBlock, CifarResNet, cifar_resnet, cifar_resnet20, cifar_resnet32, cifar_resnet44,
                           cifar_resnet56, cifar_resnet110)
from .layers import INITS, NORMS
from .cnn import PaperCNN, layeract_cnn
from .cifar_convnext import CifarConvNeXt, cifar_convnext
from .timm_cifar import cifar_mobilenetv3

__all__ = ["CifarResNet", "BasicBlock", "PaperCNN", "CifarConvNeXt", "cifar_resnet", "layeract_cnn", "cifar_convnext",
           "cifar_mobilenetv3", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
           "cifar_resnet110", "NORMS", "INITS"]

