"""ltreg-iccl: Interpolative Centroid Contrastive Learning (Tiong et al. 2021) as an ltreg method plugin.

Registers method ``iccl``, loss ``iccl`` and batch transform ``iccl-pair-mixup``; the sampler
(``paired``), prototypes (``ema-centroids``) and stage 2 (``kd-rebalance``) are the core's.
"""

from ltreg_iccl.loss import ICCLLoss, centroid_log_probs
from ltreg_iccl.method import ICCL, ICCLHParams
from ltreg_iccl.mixing import WarmupPairMixup
from ltreg_iccl.schedule import in_warmup, warmup_epochs

__version__ = "0.1.0"

__all__ = ["ICCL", "ICCLHParams", "ICCLLoss", "WarmupPairMixup", "centroid_log_probs", "in_warmup", "warmup_epochs"]
