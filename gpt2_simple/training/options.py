"""`finetune`'s options, checked once, and what it returns.

This module owns validating the keyword arguments that `finetune` takes flat (gpt-2-simple's
signature) into a frozen `TrainOptions` (`make_options`): every bad value is a one-line ValueError
naming the argument, raised before any
model or dataset is loaded. Running the options is `train.py`'s.
"""
import dataclasses
import warnings

from ..formats import hub
from ..model.names import check_name
from . import lora_run
from .optimizer import OPTIMIZERS
from .schedule import SCHEDULES
from .step import PRECISIONS

SAVE_OPTIMIZER = ("full", "bfloat16", "none")
TRAIN_ON = ("completion", "all")  # what structured records train on (chats.py)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """`finetune`'s keyword arguments, checked once."""

    steps: int = -1  # steps in this call; -1 runs until interrupted
    model_name: str = "124M"
    model_dir: str = "models"
    combine: int = 50000  # characters of small text files joined into one chunk
    batch_size: int = 1
    learning_rate: float = 0.0001
    accumulate_gradients: int = 5  # minibatches per step; their gradients are AVERAGED
    restore_from: str = "latest"  # 'latest', 'fresh', or a run folder / checkpoint path
    run_name: str = "run1"
    checkpoint_dir: str = "checkpoint"
    sample_every: int = 100  # steps between training samples; <= 0 never samples
    sample_length: int = 1023
    sample_num: int = 1
    save_every: int = 1000  # steps between saves; <= 0 saves only at the end
    print_every: int = 1
    max_checkpoints: int = 1
    only_train_transformer_layers: bool = False
    optimizer: str = "adam"
    overwrite: bool = False
    seed: int = None
    sample_dir: str = "samples"
    use_memory_saving_gradients: bool = False  # recompute each block in the backward pass
    precision: str = "float32"  # or 'mixed_float16' / 'mixed_bfloat16' (compute dtype; weights stay float32)
    val_dataset: str = None  # validation text; None: no validation
    val_every: int = 0  # steps between validations; <= 0: at every save
    val_batch_size: int = 2
    val_batch_count: int = 40  # the fixed validation sample is val_batch_count x val_batch_size windows
    save_optimizer: str = "full"  # 'full' | 'bfloat16' | 'none': what a save keeps of the optimizer
    line_by_line: bool = False  # documents mode: one document per line / row / record (documents.py)
    text_field: str = "text"  # the key of .jsonl records holding the text
    learning_rate_schedule: str = "constant"  # or 'linear' / 'cosine' (schedule.py)
    warmup_steps: int = 0
    min_learning_rate: float = 0.0  # where 'linear' and 'cosine' end
    weight_decay: float = 0.0  # decoupled (AdamW), weight matrices only
    max_grad_norm: float = None  # clip the global gradient norm; None: no clipping
    keep_best: bool = False  # keep model-best, the lowest validation loss (early_stopping.py)
    early_stopping_patience: int = None  # validations without improvement before stopping; None: never
    lora_rank: int = 0  # 0: full fine-tuning; r > 0: frozen base, trainable rank-r adapters (lora_run.py)
    lora_alpha: float = None  # adapters' scale is lora_alpha / lora_rank; None: lora_rank (scale 1)
    lora_targets: tuple = None  # layers with adapters (model/lora.py TARGETS); None: all four
    base_precision: str = "float32"  # the frozen base's storage with LoRA: 'bfloat16' / 'float16' halve it
    lora_save: str = "merged"  # 'merged': model-N holds W + scale*A@B; 'adapters': only the adapters
    train_on: str = "completion"  # structured records: 'completion' (the replies) or 'all' (chats.py)
    chat_template: str = None  # 'gpt2', 'dialogpt' or a Jinja file; None: the run's, else 'gpt2'
    packing: bool = None  # several examples a window (packing.py); None: for structured records only

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps == 0 or self.steps < -1:
            raise ValueError(f"steps={self.steps!r} must be a positive number of steps, or -1 to train until interrupted")
        for name in ("batch_size", "accumulate_gradients", "sample_length", "sample_num", "print_every", "combine",
                     "val_batch_size", "val_batch_count"):
            positive(name)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not supported; use one of {sorted(PRECISIONS)}")
        if self.val_every and self.val_every > 0 and self.val_dataset is None:
            raise ValueError(f"val_every={self.val_every} needs val_dataset=, a text file held out from training")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be > 0 (1e-4 is the default)")
        if self.save_optimizer not in SAVE_OPTIMIZER:
            raise ValueError(f"save_optimizer={self.save_optimizer!r} is not supported; use one of "
                             f"{list(SAVE_OPTIMIZER)} ('none' saves weights only, as gpt-2-simple does)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; use one of {OPTIMIZERS}")
        if not isinstance(self.restore_from, str) or not self.restore_from:
            raise ValueError(f"restore_from={self.restore_from!r} must be 'latest', 'fresh' or a run folder")
        check_name("run_name", self.run_name)
        if hub.is_hub_name(self.model_name):
            hub.repo_id(self.model_name)  # hf://ORG/NAME
        else:
            check_name("model_name", self.model_name)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r} must be an integer or None")
        check_controls(self)
        lora_run.check_options(self)


@dataclasses.dataclass
class TrainResult:
    """What `finetune` returns (gpt-2-simple returned None)."""

    run_dir: str
    step: int  # the last saved step, the N of model-N
    losses: dict  # step -> loss of every step run in this call



# The settings a model card shows (`formats/model_card.py`), recorded in the run's training.json.
CARD_SETTINGS = ("model_name", "optimizer", "learning_rate", "learning_rate_schedule", "warmup_steps", "weight_decay",
                 "max_grad_norm", "batch_size", "accumulate_gradients", "precision", "line_by_line", "lora_rank",
                 "lora_alpha", "seed")


def card_settings(opts, *, examples=False):
    """{setting: value} of `CARD_SETTINGS` that are set (None and a rank of 0 left out); for structured
    `examples`, also what they trained on and whether they were packed."""
    settings = {name: getattr(opts, name) for name in CARD_SETTINGS
                if getattr(opts, name) is not None and not (name == "lora_rank" and not opts.lora_rank)}
    return dict(settings, train_on=opts.train_on, packing=opts.packing is not False) if examples else settings


def make_options(**fields):
    """A checked `TrainOptions` (one ValueError per bad value), LoRA's fields normalised."""
    return lora_run.normalized(TrainOptions(**fields))


def as_int(name, value):
    """Accept ints and integer strings (the CLI passes strings), like gpt-2-simple's int()."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} must be an integer") from None
    return value


def check_controls(opts):
    """The documents, schedule, AdamW, clipping and early-stopping options: one line per bad value."""
    if opts.train_on not in TRAIN_ON:
        raise ValueError(f"train_on={opts.train_on!r} is not supported; use 'completion' (the replies only) or 'all'")
    if opts.packing not in (None, True, False):
        raise ValueError(f"packing={opts.packing!r} must be True, False or None (packed for conversations and pairs)")
    if opts.chat_template is not None and not isinstance(opts.chat_template, str):
        raise ValueError(f"chat_template={opts.chat_template!r} must be 'gpt2', 'dialogpt' or a Jinja template file")
    if not isinstance(opts.text_field, str) or not opts.text_field:
        raise ValueError(f"text_field={opts.text_field!r} must be the key of the .jsonl records' text, e.g. 'text'")
    if opts.learning_rate_schedule not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule={opts.learning_rate_schedule!r} is not supported; use one of {SCHEDULES}")
    if isinstance(opts.warmup_steps, bool) or not isinstance(opts.warmup_steps, int) or opts.warmup_steps < 0:
        raise ValueError(f"warmup_steps={opts.warmup_steps!r} must be an integer >= 0")
    if (opts.learning_rate_schedule != "constant" or opts.warmup_steps) and opts.steps < 0:
        raise ValueError(f"learning_rate_schedule={opts.learning_rate_schedule!r} with warmup_steps="
                         f"{opts.warmup_steps} needs a number of steps to run over; pass steps=N (not -1)")
    if opts.steps > 0 and opts.warmup_steps > opts.steps:
        raise ValueError(f"warmup_steps={opts.warmup_steps} is more than steps={opts.steps}; pass warmup_steps "
                         f"<= {opts.steps} (a tenth of the steps is usual)")
    if not 0 <= opts.min_learning_rate <= opts.learning_rate:
        raise ValueError(f"min_learning_rate={opts.min_learning_rate!r} must be in [0, learning_rate="
                         f"{opts.learning_rate}]")
    if not opts.weight_decay >= 0:
        raise ValueError(f"weight_decay={opts.weight_decay!r} must be >= 0 (0.01 is typical; 0 turns it off)")
    if opts.max_grad_norm is not None and not opts.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={opts.max_grad_norm!r} must be > 0 (1.0 is typical), or None for no clipping")
    patience = opts.early_stopping_patience
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"early_stopping_patience={patience!r} must be a positive number of validations, or None")
    for name in ("keep_best", "early_stopping_patience"):
        if getattr(opts, name) not in (None, False) and opts.val_dataset is None:
            raise ValueError(f"{name}={getattr(opts, name)!r} needs val_dataset=, a text file held out from "
                             "training, to measure the validation loss on")


def warn_unimplemented(**flags):
    for name, value in flags.items():
        if value:
            warnings.warn(f"finetune({name}=True) has no effect in TensorFlow 2 (there is no global graph "
                          "to reuse); it is ignored", stacklevel=3)
