"""Typed schema of the framework keys (everything but model_config / dataset_config).

``OmegaConf.structured(RootConfig)`` is the base every run's config is merged onto,
in struct mode: a key that is not declared here fails at start-up with its full
path. Key names follow MMF where MMF has one.

Model and dataset sub-configs are typed by the registered classes' own ``Config``
dataclasses (see ``loader.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

TEST_WEIGHTS = ("best", "last")  # evaluation.test_weights


@dataclass
class EarlyStopConfig:
    enabled: bool = False
    criteria: str = "val/r_mean"      # a logged val key, or <split>/<name> (the first dataset's)
    minimize: bool = False
    patience: int = 1000              # in updates without improvement


@dataclass
class DivergenceConfig:
    """When a run counts as diverged: it then stops, naming its last verified checkpoint."""
    loss_spike_factor: float = 10.0    # total loss above this x the recent median; 0 disables
    window: int = 100                  # micro-batches the median covers
    max_weight_norm_growth: float = 10.0  # weight-norm ratio between checkpoint writes; 0 disables


@dataclass
class TrainingConfig:
    trainer: str = "albef_trainer"
    seed: int = 42
    max_updates: Optional[int] = None  # wins over max_epochs when both are set
    max_epochs: Optional[int] = None
    batch_size: int = 64               # per process (per GPU), as in the official configs
    update_frequency: int = 1          # gradient accumulation steps per update
    log_interval: int = 10             # updates
    checkpoint_interval: int = 1000    # updates
    evaluation_interval: int = 1000    # updates; 0 disables periodic evaluation
    num_workers: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    clip_grad_norm: Optional[float] = None  # max global L2 norm; None disables clipping
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"               # auto | cpu | cuda
    find_unused_parameters: bool = False
    compile: bool = False              # torch.compile the model
    tensorboard: bool = True
    progress_bar: bool = True
    plot: bool = True                  # PNG of loss curves and metrics at the end
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)


@dataclass
class EvaluationConfig:
    """What is evaluated and the loader sizes every metric shares.

    ``metrics`` lists registered metrics, each a name (its defaults) or
    ``{type: <name>, params: {...}}``; the parameters live in the metric's own ``Config``
    (e.g. ``retrieval``: ``k_test``, ``itm_rerank``; ``accuracy``: ``save_predictions``),
    checked at start-up (see ``albef_plugin/metrics/base.py``).
    """

    metrics: List[Any] = field(default_factory=lambda: ["retrieval"])
    batch_size: int = 64               # samples per evaluation batch, per process
    num_workers: int = 2               # data-loader workers during evaluation
    # The weights the test splits are evaluated with after training: "best" (best.ckpt, the
    # best val evaluation, as the paper reports retrieval, SNLI-VE and NLVR2; the last weights
    # when no val split was evaluated, e.g. VQA) or "last" (the weights training ended with).
    test_weights: str = "best"


@dataclass
class OptimizerConfig:
    type: str = "adam_w"
    params: Dict[str, Any] = field(default_factory=lambda: {"lr": 1e-4, "weight_decay": 0.02})


@dataclass
class SchedulerConfig:
    type: str = "cosine_warmup"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ResetConfig:
    all: bool = False
    optimizer: bool = False
    counts: bool = False
    fp16_scaler: bool = False


@dataclass
class CheckpointConfig:
    resume: bool = False               # continue from <save_dir>/current.ckpt if present
    overwrite: bool = False            # a fresh run into a save_dir holding a run deletes it first
    resume_file: Optional[str] = None  # continue from this file (see MMF's precedence)
    resume_best: bool = False          # with resume: prefer best.ckpt over current.ckpt
    resume_pretrained: bool = False    # resume_file holds weights only: load the model, nothing else
    reset: ResetConfig = field(default_factory=ResetConfig)
    max_to_keep: int = -1              # models/model_<update>.ckpt files kept; -1 keeps all (the
                                       # newest one verified good is kept too: see divergence.py)
    allow_unsafe_pickle: bool = False  # allow torch.load(weights_only=False) for trusted files


@dataclass
class EnvConfig:
    save_dir: str = "${oc.env:ALBEF_SAVE_DIR,./save}"
    data_dir: str = "${oc.env:ALBEF_DATA_DIR,./data}"
    user_dir: str = "${oc.env:ALBEF_USER_DIR,''}"
    log_level: str = "info"


@dataclass
class DistributedConfig:
    backend: str = "auto"              # auto | nccl | gloo
    timeout_minutes: int = 30


@dataclass
class LauncherConfig:
    """Where the job runs. ``submitit`` submits to SLURM (see README, "Run on a cluster").

    Resources left at ``None`` default to what the partition can grant (read with
    ``sinfo`` at submission); a request no node of the partition can grant fails at
    submission instead of pending forever.
    """
    type: str = "local"                # local | submitit
    cluster: Optional[str] = None      # submitit: None (auto: slurm if srun exists) | slurm | local | debug
    folder: str = "${env.save_dir}/submitit"  # submitit's job scripts and logs
    nodes: int = 1
    tasks_per_node: int = 1            # one task (process) per GPU, or N CPU processes
    gpus_per_node: int = 0
    cpus_per_task: Optional[int] = None  # None: the node's CPUs / tasks_per_node, at most 10
    mem_gb: Optional[int] = None
    timeout_min: int = 60 * 24
    partition: Optional[str] = None    # None: the cluster's default partition
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    job_name: Optional[str] = None     # None: the name of env.save_dir
    comment: Optional[str] = None
    signal_delay_s: Optional[int] = None  # USR2 this long before the time limit; None: min(120, time/4)
    max_num_timeout: int = 10          # requeues after a time-out before the job gives up
    setup: List[str] = field(default_factory=list)  # shell lines run before srun (module load ...)
    srun_args: List[str] = field(default_factory=list)  # extra srun arguments, e.g. [--cpu-bind=none]
    # any other sbatch option, passed through: {exclude: node1, nodelist: ..., reservation: ...,
    # exclusive: true, gres: "gpu:a100:8", mail_type: END}
    slurm_additional_parameters: Dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = 64        # sweeps: array tasks running at once
    wait: bool = False                 # block until the job ends


@dataclass
class RootConfig:
    config: Optional[str] = None       # the project YAML (set by the loader)
    includes: List[str] = field(default_factory=list)
    # train | val | test | train_val | train_test | train_val_test. "val" and "test" name split
    # roles: every split a dataset declares in that role is evaluated (grounding's testA and
    # testB for "test"); periodic evaluation and best.ckpt use the "val" role.
    run_type: str = "train_val"
    model: str = "???"
    datasets: str = "???"              # comma-separated dataset builder names
    model_config: Dict[str, Any] = field(default_factory=dict)
    dataset_config: Dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
