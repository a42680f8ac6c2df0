"""The ICCL method spec: its parts by registry name, typed hyper-parameters and the paper's recipes."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltreg import HParams, MethodSpec, ModelSpec, PartRef, Reading, Recipe, Stage, Tag, ViewPlan, hp

CITATION = ("Tiong, Li, Lin, Li, Xiong, Hoi. Improving Tail-Class Representation with Centroid Contrastive "
            "Learning (ICCL). arXiv:2110.10048, 2021")


@dataclass(frozen=True)
class ICCLHParams(HParams):
    """ICCL's hyper-parameters; [P] stated in the paper, [D] ours: a reconstruction or a default (value stripped)."""

    temperature: float = field(default=0.1, metadata={
        "min": 0, "min_exclusive": True, "help": "tau of p(k|z) = softmax(z.c_k / tau) [D]"})
    gamma: float = field(default=0.5, metadata={
        "help": "class-aware stream: p(c) ∝ n_c^-gamma (0 balanced, 1 reverse) [D]"})
    mix_alpha: float = field(default=1.0, metadata={
        "min": 0, "min_exclusive": True, "help": "lam ~ Beta(alpha, alpha); 1 = U(0,1) [P] (Beta(2,2) slightly better)"})
    centroid_momentum: float = field(default=0.99, metadata={
        "min": 0, "max": 0.999999, "schedule": "ema", "help": "EMA momentum m of the class centroids [D]"})
    warmup_fraction: float = field(default=0.5, metadata={
        "min": 0, "max": 1, "help": "T_w / epochs: uniform branch only (L_ce + L_cc) before T_w [P: about half]"})
    uniform_weight_after_warmup: float = field(default=1.0, metadata={
        "min": 0, "help": "w_u on L_ce after the warm-up (CIFAR recipes: 0) [R]"})
    interp_weight: float = field(default=1.0, metadata={
        "min": 0, "help": "w_I on L_icc + L_ce^I after the warm-up [D]"})
    mix_during_warmup: bool = field(default=False, metadata={
        "help": "forward the mixed batch during the warm-up too (core pair-mixup behaviour; its loss is unused)"})
    stage2_epochs: int = field(default=10, metadata={"min": 0, "help": "KD rebalancing epochs [D]"})
    stage2_gamma: float = field(default=1.0, metadata={"help": "stage-2 class-aware sampler gamma' (1 = reverse) [P]"})
    kd_weight: float = field(default=0.5, metadata={
        "min": 0, "help": "beta_kd on T^2 KL(teacher || student) [P]; 0 = plain CE (slightly better on CIFAR)"})
    kd_temperature: float = field(default=2.0, metadata={"min": 0, "min_exclusive": True, "help": "KD temperature T [D]"})
    stage2_finetune_backbone: bool = field(default=False, metadata={
        "help": "stage 2 fine-tunes the backbone (CIFAR) instead of freezing it (ImageNet-LT, iNat) [P]"})
    stage2_backbone_lr_scale: float = field(default=0.1, metadata={
        "min": 0, "min_exclusive": True, "help": "backbone lr / classifier lr when fine-tuned in stage 2 [D]"})
    proj_dim: int = field(default=128, metadata={
        "min": 1, "help": "embedding size d of the projection head [D: 128; CIFAR recipes 32, the paper's smaller "
                          "CIFAR value was stripped]"})
    colour_jitter: bool = field(default=False, metadata={
        "help": "colour jitter on the view (ImageNet-LT recipe [P]); needs the 'jitter' view modifier"})

    @property
    def stage2_freeze_backbone(self) -> bool:
        """``not stage2_finetune_backbone``: what ``kd-rebalance`` takes (resolved by ``hp`` like a field)."""
        return not self.stage2_finetune_backbone


_CIFAR = {"epochs": 200, "batch_size": 128, "lr": 0.1, "weight_decay": 2e-4, "warmup_epochs": 5, "schedule": "step",
          "milestones": [160, 180], "lr_decay": 0.01, "backbone": "resnet32"}
_CIFAR_HP = {"uniform_weight_after_warmup": 0.0, "stage2_finetune_backbone": True, "proj_dim": 32}
_CIFAR_PAPER = {"cifar100-lt": {100: 46.6, 50: 51.6, 10: 62.1}, "cifar10-lt": {100: 82.1, 50: 84.7, 10: 89.7}}


P, D = Tag.paper, Tag.ours
_BBN = D("BBN's CIFAR-LT setting, which §4.3 says it follows ([59]); the paper's own number is stripped from the text")
_CIFAR_TAGS = {**{k: _BBN for k in _CIFAR}, "schedule": P("§4.3: warm-up, then step decay at two epochs"),
               "backbone": P("§4.3: ResNet-32")}
_CIFAR_HP_TAGS = {"uniform_weight_after_warmup": D("a reading: the CIFAR value of w_u is stripped from §4.3"),
                  "stage2_finetune_backbone": P("§3.6: the encoder is 'either fixed or fine-tuned with a smaller "
                                                "learning rate'; which set fine-tunes is stripped, fine-tuning on CIFAR is ours, D"),
                  "proj_dim": D("the paper's smaller CIFAR embedding size is stripped from §4.3")}


def _recipes() -> dict[str, Recipe]:
    """Table 1-3 numbers [P]; the settings' numbers are stripped from the paper's text, so most values are [D]."""
    out = {}
    for ds, by_if in _CIFAR_PAPER.items():
        for imb, top1 in by_if.items():
            out[f"{ds}-if{imb}"] = Recipe(
                f"{ds} IF {imb}, ResNet-32, 200 epochs (T_w 100), SGD 0.1 step x0.01 at 160/180, w_u = 0 after the "
                f"warm-up, stage 2 fine-tunes the backbone at lr x0.1",
                train={**_CIFAR, "dataset": ds, "imbalance": float(imb)}, hparams=_CIFAR_HP, paper={"All": top1},
                tags={**_CIFAR_TAGS, **_CIFAR_HP_TAGS, "dataset": P("Table 1"), "imbalance": P("Table 1"),
                      "All": P("Table 1")})
    out["imagenet-lt-x50"] = Recipe(
        "ImageNet-LT, ResNeXt-50 32x4d, 90 epochs (T_w 45), batch 128, SGD 0.05 cosine, wd 5e-4, flip + crop + "
        "colour jitter; stage 2 on the frozen backbone",
        train={"dataset": "imagenet-lt", "backbone": "resnext50_32x4d", "epochs": 90, "batch_size": 128, "lr": 0.05,
               "weight_decay": 5e-4, "schedule": "cosine"},
        hparams={"colour_jitter": True},
        paper={"All": 54.0, "Many": 60.7, "Medium": 52.9, "Few": 39.0},
        tags={"dataset": P("Table 2"), "backbone": P("§4.3: ResNeXt-50"), "schedule": P("§4.3: cosine"),
              "epochs": D("stripped from §4.3; Decouple's [22] 90"),
              "batch_size": D("§4.4: 'a smaller batch size' than Decouple's, number stripped"),
              "lr": D("§4.4: an improved learning rate, number stripped"),
              "weight_decay": D("stripped from §4.3; Decouple's [22] 5e-4"),
              "colour_jitter": P("§4.3: flip, cropping and colour jittering"),
              **{k: P("Table 2") for k in ("All", "Many", "Medium", "Few")}})
    for epochs, paper in ((90, {"All": 70.5, "Many": 67.6, "Medium": 70.2, "Few": 71.6}),
                          (200, {"All": 72.5, "Many": 72.1, "Medium": 72.3, "Few": 72.9})):
        out["inat2018-r50" + ("" if epochs == 90 else f"-{epochs}ep")] = Recipe(
            f"iNaturalist 2018, ResNet-50, {epochs} epochs (T_w {epochs // 2}), batch 256, SGD 0.1 cosine, wd 1e-4; "
            f"stage 2 on the frozen backbone",
            train={"dataset": "inat2018", "backbone": "resnet50", "epochs": epochs, "batch_size": 256, "lr": 0.1,
                   "weight_decay": 1e-4, "schedule": "cosine"},
            paper=paper,
            tags={"dataset": P("Table 3"), "backbone": P("§4.3: ResNet-50"), "epochs": P("Table 3: 90 and 200 epochs"),
                  "schedule": P("§4.3: cosine decay"), "batch_size": D("stripped from §4.3; Decouple's [22] 256"),
                  "lr": D("stripped from §4.3; Decouple's [22] 0.1"),
                  "weight_decay": D("stripped from §4.3; Decouple's [22] 1e-4"),
                  **{k: P(f"Table 3, {epochs} epochs") for k in ("All", "Many", "Medium", "Few")}})
    return out


ICCL = MethodSpec(
    name="iccl",
    summary="interpolative centroid contrastive learning: uniform + interpolative branch over EMA class centroids, "
            "then KD classifier rebalancing",
    citation=CITATION,
    bibtex="""@misc{tiong2021iccl,
  title = {Improving Tail-Class Representation with Centroid Contrastive Learning},
  author = {Tiong and Li and Lin and Li and Xiong and Hoi},
  howpublished = {arXiv:2110.10048},
  year = {2021}
}""",
    loss=PartRef("iccl", temperature=hp("temperature"), warmup_fraction=hp("warmup_fraction"),
                 uniform_weight_after_warmup=hp("uniform_weight_after_warmup"), interp_weight=hp("interp_weight")),
    hparams=ICCLHParams(),
    sampler=PartRef("paired", first="instance", second="class-aware", gamma=hp("gamma")),
    prototypes=PartRef("ema-centroids", momentum=hp("centroid_momentum"), view=0, normalize=True),
    batch_transform=PartRef("iccl-pair-mixup", alpha=hp("mix_alpha"), warmup_fraction=hp("warmup_fraction"),
                            mix_during_warmup=hp("mix_during_warmup")),
    stage2=Stage(PartRef("kd-rebalance", gamma=hp("stage2_gamma"), kd_weight=hp("kd_weight"),
                         temperature=hp("kd_temperature"), freeze_backbone=hp("stage2_freeze_backbone"),
                         backbone_lr_scale=hp("stage2_backbone_lr_scale")), epochs=hp("stage2_epochs")),
    # colour_jitter=True: "+jitter" (flip + crop + colour jitter, Kang et al.'s ImageNet-LT view, which the paper follows)
    views=ViewPlan(("cls",), modifiers={"jitter": hp("colour_jitter")}),
    model=ModelSpec(classifier="linear", proj_dim=hp("proj_dim")),  # per run: ICCL.model_for(hparams)
    recipes=_recipes(),
    readings=(
        Reading("x^a instance-balanced, x^b class-aware with p(c) proportional to n_c^-gamma", P("§3.1-3.2: two samplers")),
        Reading("gamma = 0.5", D("the value is stripped from §4.3")),
        Reading("x^I = lam x^a + (1 - lam) x^b with one lam ~ U(0, 1) per sample", P("§3.2; Table 5: Beta(1, 1)")),
        Reading("centroids = per-class EMA (m = 0.99, re-normalised) of the uniform branch's z^a after each step; a "
                "class's first batch mean on its first appearance; uninitialised classes out of the softmax",
                D("§3.3 gives the EMA; m, the first value and the re-normalisation are ours (m stripped)")),
        Reading("warm-up until epoch round(warmup_fraction x epochs): L_ce + L_cc on x^a only, without mixing",
                P("§4.3: 'the first T_w epochs ... approximately halfway'")),
        Reading("after the warm-up: L = w_u L_ce + w_I (L_icc + mixup CE of u(x^I))", P("§3.5, Eq. 8")),
        Reading("w_u = 1, w_I = 1 (CIFAR recipes w_u = 0)", D("the values are stripped from §4.3")),
        Reading("tau = 0.1 of the centroid softmax", D("the value is stripped from §4.3")),
        Reading("stage 2: drop the projector; class-aware sampler gamma' = 1; CE + beta_kd T^2 KL(teacher || student) "
                "from the stage-1 classifier, beta_kd = 0.5", P("§3.6, §4.3")),
        Reading("stage-2 CE keeps weight 1 beside the KD term; T = 2; 10 epochs", D("not readable in §3.6 / §4.3")),
        Reading("embedding d = proj_dim: 128, CIFAR 32", D("the CIFAR value is stripped from §4.3")),
        Reading("ImageNet-LT view: flip + crop + colour jitter (colour_jitter; needs the 'jitter' view modifier)",
                P("§4.3")),
    ),
)
