"""The sections of a run's configuration: one dataclass each, every field with its default
and the rules it carries (range, choices, rerun-neutral, path; ``fassl.validation``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fassl.registry import ARM_NAMES, DATASETS, METHOD_NAMES, SELF_SUPERVISED, WEIGHTS
from fassl.validation import choice, neutral, path, ranged

COMPILE_MODES = ("auto", "compile", "eager")  # train.compile


@dataclass
class SplitFilesConfig:
    """List files of dataset=splitfile, one ``relative/path label`` per line (SDCLR's format).

    A relative list path is looked up in ``dir`` (default: data.root); image paths in the
    lists are relative to data.root.
    """

    dir: str = ""
    pretrain: str = ""  # the long-tailed pre-training set (required)
    pool: str = ""  # the balanced probe-train set; empty: the pretrain list
    few_shot: str = ""  # empty: a nested data.few_shot_fraction subset of the pool
    val: str = ""  # empty: data.val_per_class images a class held out from the pool
    test: str = ""  # required


@dataclass
class DataConfig:
    """Where the images come from and how the long-tailed protocol draws from them."""

    dataset: str = choice("digits", DATASETS)  # a source of fassl.registry.SOURCES
    # cifar10/cifar100: folder holding cifar-10-batches-py / cifar-100-python.
    # folder: an image folder; with train/ and test/ sub-folders they are used as such.
    # splitfile: the folder the list files' paths are relative to (e.g. ImageNet's).
    # tinyimagenet: the tiny-imagenet-200 folder, or a .zip / .tar.gz of it.
    root: str = path(must_exist=False)
    labeled: bool = True  # folder: one sub-folder per class; False: images found recursively
    image_size: int = ranged(32, "[8,4096]")  # folder images are resized to this square size
    # Long-tailed subset of the probe pool: "pool" (SDCLR: n_max = pool size / C),
    # "full" (max 5000 per class drawn from the whole train set), "none" (use as found).
    longtail: str = choice("pool", ("pool", "full", "none"))
    imbalance: float = ranged(100.0, ">=1")  # rho = n_max / n_min, any value >= 1
    max_per_class: int = ranged(0, ">=0")  # n_max; 0 = the protocol's default
    split: int = ranged(0, ">=0")  # seed of the class-rank permutation (which class is frequent)
    # held-out validation images per class (5k for CIFAR-10)
    val_per_class: int = ranged(500, ">=0")
    few_shot_fraction: float = ranged(0.01, "(0,1]")  # nested few-shot subset of the probe pool
    cache_dir: str = neutral("~/.cache/fassl")
    download: bool = neutral(False)  # fetch CIFAR archives when they are missing
    # A folder with SDCLR's published CIFAR index files (trainIdxList.npy, valIdxList.npy,
    # split{k}_D_i.npy, split{k}_S_b.npy, cifar100_* for CIFAR-100): with it, data.split=k
    # picks split k's files instead of drawing the subsets.
    sdclr_splits: str = path()
    split_files: SplitFilesConfig = field(default_factory=SplitFilesConfig)
    # Frequent / Medium / Rare: "thirds" of the classes by pre-training count, or "counts"
    # (SDCLR's ImageNet-100-LT rule: frequent > group_thresholds[0] images, rare <
    # group_thresholds[1], medium in between).
    groups: str = choice("thirds", ("thirds", "counts"))
    group_thresholds: list[int] = field(default_factory=lambda: [100, 20])
    # Splits whose decoded uint8 images would exceed this budget together are decoded on
    # the fly by data.workers processes instead of held in memory.
    max_memory_gb: float = ranged(8.0, ">0", neutral=True)
    # decoding processes of a streamed split; 0 = up to 8 CPU cores
    workers: int = ranged(0, ">=0", neutral=True)


@dataclass
class AugmentConfig:
    """Two-view augmentation (SDCLR's CIFAR recipe by default), applied on the device."""

    crop_scale_min: float = ranged(0.1, "(0,1]")
    flip_p: float = ranged(0.5, "[0,1]")
    brightness: float = ranged(0.4, ">=0")
    contrast: float = ranged(0.4, ">=0")
    saturation: float = ranged(0.4, ">=0")
    hue: float = ranged(0.1, "[0,0.5]")
    jitter_p: float = ranged(0.8, "[0,1]")
    grayscale_p: float = ranged(0.2, "[0,1]")
    blur_p: float = ranged(0.0, "[0,1]")


@dataclass
class ModelConfig:
    # resnet18 | resnet50 (the project's own), or timm:<name> / torchvision:<name>: any
    # model of that library, built without pretrained weights (fassl.models.library)
    arch: str = "resnet18"
    # the library's keyword arguments for timm: / torchvision: (e.g. {img_size: 32,
    # patch_size: 4} for a ViT at 32x32); width and cifar_stem apply to the own ResNets
    kwargs: dict[str, Any] = field(default_factory=dict)
    width: int = ranged(64, ">=1")  # channels of the first stage (64 = the paper's ResNet-18)
    cifar_stem: bool = True  # 3x3 stride-1 first conv, no max-pool
    proj_hidden: int = ranged(512, ">=1")
    proj_dim: int = ranged(128, ">=1")
    # projection head: bn (a BatchNorm on the output, as SimCLR's, SDCLR's and BCL's code)
    # | plain (ends in a linear layer, as BYOL's and SwAV's) | auto (the method's own; a
    # run started from weights keeps the head they have)
    head: str = choice("auto", ("auto", "bn", "plain"))


@dataclass
class OptimConfig:
    # sgd | lars (SimCLR's, BYOL's) | adamw (what ViTs are usually trained with)
    optimizer: str = choice("sgd", ("sgd", "lars", "adamw"))
    lr: float = ranged(0.5, ">0")
    momentum: float = ranged(0.9, "[0,1)")  # AdamW's beta1
    adam_beta2: float = ranged(0.999, "[0,1)")
    weight_decay: float = ranged(1e-4, ">=0")
    epochs: int = ranged(100, ">=1")
    warmup_epochs: float = ranged(10.0, ">=0")
    batch_size: int = ranged(512, ">=2")  # global batch size, split across processes
    min_lr_ratio: float = ranged(0.0, "[0,1]")  # cosine ends at lr * min_lr_ratio
    lars_eta: float = ranged(0.001, ">0")
    # LARS's trust ratio capped at 1 / lr, so a step never exceeds SGD's (solo-learn's
    # clip_lr, which its CIFAR recipes set); false: the unclipped lr * eta * |w| step
    lars_clip_lr: bool = False


@dataclass
class TrainConfig:
    device: str = neutral("auto")  # auto | cpu | cuda | cuda:N
    # auto (bf16 where the hardware has it) | bf16 | fp32
    precision: str = choice("auto", ("auto", "bf16", "fp32"))
    # auto: channels_last (faster on CUDA and on every CPU measured) unless the model has
    # a strided 1x1 conv with < 16 input channels, where oneDNN's CPU kernel is unsafe
    # (fassl.runtime.resolve_channels_last; docs/RESULTS.md section 10)
    memory_format: str = choice("auto", ("auto", "channels_last", "contiguous"), neutral=True)
    # epochs between kNN monitors on the validation set (k: probe.knn_k); 0 = off
    knn_every: int = ranged(0, ">=0")
    # steps between metric log lines; the loss is also checked for NaN/inf this often
    # (reading it from the device every step would make every step wait for it)
    log_every: int = ranged(20, ">=1", neutral=True)
    # seconds between checkpoints (written after the epoch that passes the mark, and
    # always after the last epoch); 0 = after every epoch
    checkpoint_every_s: float = ranged(600.0, ">=0", neutral=True)
    # torch.compile of the training forward: auto (CUDA) | compile | eager
    compile: str = choice("auto", COMPILE_MODES, neutral=True)
    progress: bool = neutral(True)
    init_from: str = path()  # checkpoint whose weights initialise the method's encoder


@dataclass
class SimCLRConfig:
    temperature: float = ranged(0.2, ">0")


@dataclass
class TemperatureConfig:
    """A schedule of the contrastive temperature (Kukleva et al., ICLR 2023), read by
    SimCLR, SDCLR, BCL and FASSL's stage 1 in place of their fixed temperature."""

    schedule: str = choice("fixed", ("fixed", "cosine"))  # fixed: each method's own
    tau_min: float = ranged(0.1, ">0")
    tau_max: float = ranged(1.0, ">0")  # the value at t = 0, and at every whole period
    # 0: a fifth of the run (Kukleva et al.: 400 of 2,000 epochs)
    period_epochs: float = ranged(0.0, ">=0")
    # epoch: tau held for a whole epoch, t the 1-based epoch (Kukleva et al.'s code) |
    # step: tau moves every step, t the 0-based step over steps per epoch
    rule: str = choice("epoch", ("epoch", "step"))


@dataclass
class BCLConfig:
    """Boosted contrastive learning (Zhou et al., ICML 2022): ``bcl_i`` on SimCLR, ``bcl_d``
    on SDCLR. Each image's loss, averaged over epochs, sets how strongly its views are
    augmented on top of the common augmentation (fassl.augment.boost)."""

    # momentum of each image's loss from epoch to epoch (BCL's train.py and train_sdclr.py)
    beta: float = ranged(0.97, "[0,1)")
    # randaugment (BCL's own 15 operations) | common (SSL's own)
    ops: str = choice("randaugment", ("randaugment", "common"))
    # operations drawn per view (RandAugment's N); 0: BCL's README, 1 for bcl_i, 2 for bcl_d
    num_ops: int = ranged(0, ">=0")
    # magnitude at strength 1, as a share of each op's range (BCL's rand_strength / 30)
    max_magnitude: float = ranged(1.0, "(0,1]")
    # bcl: BCL's rule, one magnitude an image for both views, floored at 10 (one op) or 5
    # (more) of 30 | uniform: strength * u, u drawn per view and op
    magnitude: str = choice("bcl", ("bcl", "uniform"))


@dataclass
class GHConfig:
    """Geometric Harmonization (Zhou et al., NeurIPS 2023): ``simclr_gh`` on SimCLR,
    ``sdclr_gh`` on SDCLR. After a warm-up of the base method, each image's scores
    against K fixed, geometrically uniform target directions are pulled towards
    Sinkhorn labels under a prior pi: the share of images whose momentum-averaged score
    is highest on each target (fassl.losses.gh). The epochs are shares of the run
    (docs/method.md, Geometric Harmonization)."""

    # K target directions; 0: the reference code's 100 (--target_dim, every dataset),
    # or model.proj_dim where that is smaller (a simplex of K needs K <= the dimension)
    targets: int = ranged(0, ">=0")
    target_seed: int = ranged(0, ">=0")  # the Gaussian draw the simplex is made from
    gamma: float = ranged(0.1, ">0")  # softmax temperature of the swapped cross-entropy
    epsilon: float = ranged(0.05, ">0")  # Sinkhorn's entropy regularisation
    iterations: int = ranged(300, ">=1")  # Sinkhorn's rounds (--sinkhorn_iter)
    weight: float = ranged(1.0, ">=0")  # GH's weight after the ramp
    # share of the epochs before GH starts (CIFAR-100-LT README: --warm_up 500 of 1000)
    warmup: float = ranged(0.5, "[0,1)")
    # share of the epochs over which GH's weight ramps up to gh.weight (--GH_warm_up 10)
    ramp: float = ranged(0.01, "[0,1]")
    # share of the epochs between re-estimates of the prior (every 20 of 1000)
    refresh: float = ranged(0.02, "(0,1]")
    beta: float = ranged(0.999, "[0,1)")  # momentum of each image's scores after warm-up
    warmup_beta: float = ranged(0.9, "[0,1)")  # ... during the warm-up


@dataclass
class LDAMConfig:
    """LDAM-DRW (Cao et al., NeurIPS 2019), the supervised long-tail reference; with
    ``train.init_from`` a self-supervised encoder it is LDAM-DRW+SSP (Yang & Xu, NeurIPS
    2020)."""

    max_margin: float = ranged(0.5, ">0")  # the rarest class's margin
    scale: float = ranged(30.0, ">0")  # s, the logit scale of the cosine classifier
    # share of the epochs after which class-balanced weights apply
    drw_start: float = ranged(0.8, "[0,1]")
    # beta of the class-balanced (effective-number) weights
    drw_beta: float = ranged(0.9999, "[0,1)")
    # fassl compare's ldam_drw_ssp arm starts from this method's run of the same seed
    ssp_method: str = choice("sdclr", SELF_SUPERVISED)


@dataclass
class SDCLRConfig:
    temperature: float = ranged(0.2, ">0")
    prune_ratio: float = ranged(0.9, "[0,1)")  # share of conv weights the pruned branch zeroes


@dataclass
class BYOLConfig:
    pred_hidden: int = ranged(512, ">=1")
    ema: float = ranged(0.99, "[0,1]")  # tau at the start
    ema_end: float = ranged(1.0, "[0,1]")  # tau at the end with the cosine schedule
    ema_schedule: str = choice("cosine", ("fixed", "cosine"))


@dataclass
class SwAVConfig:
    num_prototypes: int = ranged(100, ">=1")
    temperature: float = ranged(0.1, ">0")
    sinkhorn_iters: int = ranged(3, ">=1")
    epsilon: float = ranged(0.05, ">0")
    queue_length: int = ranged(0, ">=0")  # 0 = no queue
    queue_start_epoch: int = ranged(0, ">=0")
    freeze_prototypes_steps: int = ranged(300, ">=0")
    # Multi-crop (main_swav.py --nmb_crops 2 N): N smaller crops beside the two global
    # ones; codes come from the global crops only and every other crop predicts them.
    # 0: the two-crop SwAV of the CIFAR recipes.
    local_crops: int = ranged(0, ">=0")
    local_size: int = ranged(0, ">=0")  # side in pixels; 0: 96/224 of the image's, as published
    local_scale_min: float = ranged(0.05, "(0,1]")  # --min_scale_crops 0.14 0.05
    local_scale_max: float = ranged(0.14, "(0,1]")  # --max_scale_crops 1 0.14


@dataclass
class DINOConfig:
    """DINO (Caron et al., ICCV 2021): a student matches a momentum teacher's centred,
    sharpened outputs over 2 global and ``local_crops`` local crops (the teacher sees the
    global ones). Defaults: facebookresearch/dino main_dino.py and its ResNet-50 command,
    the head's output size solo-learn's CIFAR one (docs/method.md, DINO)."""

    out_dim: int = ranged(4096, ">=1")  # K, the last layer's outputs (ImageNet: 65536)
    hidden_dim: int = ranged(2048, ">=1")  # the head's MLP
    bottleneck_dim: int = ranged(256, ">=1")  # l2-normalised before the last layer
    head_layers: int = ranged(3, ">=1")
    head_bn: bool = False  # BatchNorm in the head's MLP (--use_bn_in_head)
    norm_last_layer: bool = True  # the weight-normalised last layer's norms stay 1
    freeze_last_layer: int = ranged(1, ">=0")  # epochs the last layer does not move
    student_temp: float = ranged(0.1, ">0")
    teacher_temp: float = ranged(0.04, ">0")  # after the warm-up
    warmup_teacher_temp: float = ranged(0.04, ">0")
    warmup_teacher_temp_epochs: int = ranged(0, ">=0")
    center_momentum: float = ranged(0.9, "[0,1]")
    ema: float = ranged(0.996, "[0,1]")  # the teacher's momentum, cosine to ema_end
    ema_end: float = ranged(1.0, "[0,1]")
    clip_grad: float = ranged(3.0, ">=0")  # each parameter's gradient norm at most; 0 = off
    global_scale_min: float = ranged(0.14, "(0,1]")  # --global_crops_scale 0.14 1
    local_crops: int = ranged(8, ">=0")  # --local_crops_number
    local_size: int = ranged(0, ">=0")  # side in pixels; 0: 96/224 of the image's, as DINO's
    local_scale_min: float = ranged(0.05, "(0,1]")  # --local_crops_scale 0.05 0.14
    local_scale_max: float = ranged(0.14, "(0,1]")
    # true: DINO's blur, always on the first global crop, 0.1 on the second, 0.5 on the
    # local ones; false: augment.blur_p on every crop (the CIFAR recipes: none)
    blur: bool = True
    solarize_p: float = ranged(0.2, "[0,1]")  # the second global crop's solarization


@dataclass
class PrototypeConfig:
    """Stage 1: frequency-aware prototype learning (Eq. 1-2)."""

    num_prototypes: int = ranged(128, ">=1")  # K
    temperature: float = ranged(0.2, ">0")  # beta of Eq. 2
    normalize: bool = True  # L2-normalise z and p before h = P z
    feature: str = choice("projection", ("projection", "backbone"))  # D = proj_dim | backbone


@dataclass
class RebalanceConfig:
    """Stage 2: prototypical re-balanced self-supervised learning (Eq. 3-4)."""

    # log phi: paper (Eq. 3 as written) | paper_normalized | softmax_density |
    # cluster_size | knn | none (phi = 1: BYOL from the teacher, the paper's ablation).
    # knn is the default because it ranked non-frequent images highest most consistently
    # (docs/RESULTS.md, weight enrichment); paper is Eq. 3 exactly as the paper writes it.
    weight: str = choice("knn", WEIGHTS)
    # clamp log phi to batch mean +- clip_std * std; 0 = no clip
    clip_std: float = ranged(2.0, ">=0")
    # Standardise log phi per batch to this std before clipping (not in the paper): the
    # variants' raw spreads differ by orders of magnitude (docs/RESULTS.md). 0 = as is.
    strength: float = ranged(0.5, ">=0")
    density_temperature: float = ranged(0.1, ">0")  # softmax_density
    weight_k: int = ranged(10, ">=1")  # knn: the neighbours whose similarity sets log phi
    weight_view: str = choice("mean", ("first", "mean"))  # the teacher view(s) behind phi
    global_stats: bool = True  # clip/normalise with statistics of the global batch
    pred_hidden: int = ranged(512, ">=1")
    ema: float = ranged(0.99, "[0,1]")  # tau of Eq. 4
    ema_end: float = ranged(0.99, "[0,1]")
    ema_schedule: str = choice("fixed", ("fixed", "cosine"))


@dataclass
class ProbeConfig:
    settings: list[str] = choice(
        None, ("standard", "few_shot"), factory=lambda: ["standard", "few_shot"]
    )
    # fast (cached features) | sdclr (augmented, lr 30, steps)
    variant: str = choice("fast", ("fast", "sdclr"))
    fast_epochs: int = ranged(100, ">=1")
    fast_lr: float = ranged(0.1, ">0")
    fast_weight_decay: float = ranged(0.0, ">=0")
    fast_batch_size: int = ranged(256, ">=1")
    sdclr_lr: float = ranged(30.0, ">0")
    sdclr_batch_size: int = ranged(128, ">=1")
    standard_epochs: int = ranged(30, ">=1")
    few_shot_epochs: int = ranged(100, ">=1")
    knn_k: int = ranged(200, ">=1")  # the kNN classifier's k, here and in the training monitor


@dataclass
class PipelineConfig:
    """Stage order of FASSL; a stage with a given checkpoint is skipped."""

    teacher_checkpoint: str = path()  # an existing SDCLR run's checkpoint: skip stage 0
    prototypes_checkpoint: str = path()  # an existing stage-1 checkpoint: skip stages 0-1
    teacher: OptimConfig = field(default_factory=OptimConfig)
    prototypes: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.05, epochs=50, warmup_epochs=2.0)
    )
    rebalance: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.05, epochs=200, warmup_epochs=5.0)
    )


@dataclass
class CompareConfig:
    methods: list[str] = choice(
        None, ARM_NAMES, factory=lambda: ["simclr", "byol", "swav", "sdclr", "fassl"]
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # Epochs of each baseline; 0 = the pipeline's three stages together (equal compute:
    # the same number of images through the network as FASSL).
    baseline_epochs: int = ranged(0, ">=0")
    # A sweep: dotted config key -> values, e.g. {prototypes.num_prototypes: [64, 128]}
    # (YAML flow mapping: a space after the colon). Every combination is compared in
    # out_dir/grid/<key=value>/; stages a key leaves unchanged are trained once
    # (fassl.compare.sweep).
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Config:
    method: str = choice("simclr", METHOD_NAMES)
    out_dir: str = neutral("runs/default")
    seed: int = ranged(0, ">=0")
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    sdclr: SDCLRConfig = field(default_factory=SDCLRConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    bcl: BCLConfig = field(default_factory=BCLConfig)
    gh: GHConfig = field(default_factory=GHConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    probe: ProbeConfig = neutral(factory=ProbeConfig)  # after training
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    compare: CompareConfig = neutral(factory=CompareConfig)  # which runs, not what each learns
