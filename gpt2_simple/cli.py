"""The `gpt2_simple` command: finetune, generate, download, encode and export from a shell.

This module owns argument parsing and nothing else. Each subcommand's flags are named as the
Python function's arguments and take their defaults, types and help from its signature and
docstring, so the command line and the library cannot disagree. Booleans accept `--flag`,
`--flag true` and `--flag False` (gpt-2-simple's CLI style). Errors a user can fix are printed
as one line with exit code 2; `main` returns the exit code and never calls `sys.exit`.

    gpt2_simple finetune mytext.txt --model_name 124M --steps 1000
    gpt2_simple generate --run_name run1 --nsamples 5 --length 200 --nfiles 2 --folder gen
    gpt2_simple generate --model_name 124M --prefix "Hello" --stdout
    gpt2_simple download 355M
    gpt2_simple encode big.txt --out_path big.npz
    gpt2_simple export_saved_model checkpoint/run1 exported/gpt2/1
    gpt2_simple export_hf checkpoint/run1 hf/run1
    gpt2_simple export_gguf checkpoint/run1 run1.gguf --dtype q8_0

The library is imported inside the functions below, never when this module is imported.
"""
import argparse
import datetime
import inspect
import os
import re
import sys

PROG = "gpt2_simple"
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
INT_WHEN_NONE = {"seed"}  # arguments whose default is None but whose values are integers

# Arguments that are not flags: the session, and options that mean nothing in a fresh process
# or that the subcommand sets itself (generate's output goes to --folder or --stdout).
NOT_FLAGS = {
    "finetune": {"sess", "dataset", "reuse"},
    "load_gpt2": {"sess", "reuse"},
    "generate": {"sess", "sample_dir", "return_as_list", "destination_path"},
    "download_gpt2": {"model_name"},
    "encode_dataset": {"file_path"},
}


# ---------------------------------------------------------------------------------------------
# Flags from signatures


def parse_bool(text):
    """'true'/'false' (any case, also yes/no/1/0) -> bool; gpt-2-simple's CLI took 'true'/'false'."""
    if isinstance(text, bool):
        return text
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose boolean flags never swallow the next argument.

    `--overwrite mytext.txt` must mean overwrite=True and dataset mytext.txt, while
    `--overwrite false` must mean overwrite=False. Before parsing, a boolean flag followed by a
    true/false word is joined into `--flag=word`, and a bare one becomes `--flag=true`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bool_flags = set()

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        if kwargs.get("type") is parse_bool:
            self.bool_flags.update(action.option_strings)
        return action

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._join_bool_values(args), namespace)

    def _join_bool_values(self, args):
        out, i = [], 0
        while i < len(args):
            token = args[i]
            if token == "--":
                return out + args[i:]
            if token in self.bool_flags:
                following = args[i + 1] if i + 1 < len(args) else ""
                if following.strip().lower() in TRUE_WORDS + FALSE_WORDS:
                    out.append(f"{token}={following}")
                    i += 2
                    continue
                token += "=true"
            out.append(token)
            i += 1
        return out


def _argument_docs(function):
    """{argument: its text} from the `Args:` section of a Google-style docstring."""
    docs, names = {}, []
    in_args = False
    for line in (inspect.getdoc(function) or "").splitlines():
        if line.strip() == "Args:":
            in_args = True
        elif in_args and line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        elif in_args and (entry := re.match(r"^ {4}([\w, ]+):\s*(.*)$", line)):
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                docs[name] = entry.group(2)
        elif in_args and line.startswith("     ") and names:
            for name in names:
                docs[name] += " " + line.strip()
    return docs


def add_flags(parser, function, skip=(), choices=None):
    """One `--name` flag per argument of `function` that has a default; returns the names.

    The default, the type (the default's type; str for None, int for `seed`) and the help text
    all come from `function` itself.
    """
    docs = _argument_docs(function)
    added = []
    for name, param in inspect.signature(function).parameters.items():
        if name in skip or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        help_text = (docs.get(name, "").replace("%", "%%") + " (default: %(default)r)").strip()
        options = dict(default=default, help=help_text, choices=(choices or {}).get(name))
        if isinstance(default, bool):
            options.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif default is None:
            options.update(type=int if name in INT_WHEN_NONE else str)
        else:
            options.update(type=type(default))
        parser.add_argument("--" + name, **options)
        added.append(name)
    return added


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _summary(function):
    return (inspect.getdoc(function) or "").split("\n")[0]


def build_parser():
    """The `gpt2_simple` parser with its subcommands."""
    import gpt2_simple as gpt2
    from gpt2_simple.training.optimizer import OPTIMIZERS

    parser = _Parser(prog=PROG, description="Fine-tune OpenAI's GPT-2 on your text and generate from it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{finetune,generate,download,encode,export_saved_model,export_hf,export_gguf}")
    finetune = commands.add_parser("finetune", help="fine-tune a model on a dataset",
                                   description=_summary(gpt2.finetune))
    finetune.add_argument("dataset_positional", nargs="?", metavar="dataset",
                          help="a .txt/.csv/.npz file, a folder or a glob (or use --dataset)")
    finetune.add_argument("--dataset", help="the same as the positional dataset")
    add_flags(finetune, gpt2.finetune, NOT_FLAGS["finetune"], choices={"optimizer": OPTIMIZERS})

    generate = commands.add_parser("generate", help="generate text from a run or a pretrained model",
                                   description="Load a fine-tuned run (or, with --model_name, a pretrained "
                                               "model) and write generated texts to files in --folder, or print "
                                               "them with --stdout.")
    loading = add_flags(generate, gpt2.load_gpt2, NOT_FLAGS["load_gpt2"])
    add_flags(generate, gpt2.generate, NOT_FLAGS["generate"] | set(loading))
    generate.add_argument("--nfiles", type=_positive_int, default=1,
                          help="number of files to write, each with nsamples texts (default: %(default)r)")
    generate.add_argument("--folder", default="gen",
                          help="folder for the files; created if missing, never emptied (default: %(default)r)")
    generate.add_argument("--stdout", action="store_true", help="print the texts instead of writing files")

    download = commands.add_parser("download", help="download a released GPT-2 model",
                                   description=_summary(gpt2.download_gpt2))
    model_name = inspect.signature(gpt2.download_gpt2).parameters["model_name"].default
    download.add_argument("model_name_positional", nargs="?", metavar="model_name",
                          help=_argument_docs(gpt2.download_gpt2).get("model_name"))
    download.add_argument("--model_name", default=model_name, help="the same as the positional model_name (default: %(default)r)")
    add_flags(download, gpt2.download_gpt2, NOT_FLAGS["download_gpt2"])

    encode = commands.add_parser("encode", help="encode a dataset once into an .npz for finetune",
                                 description=_summary(gpt2.encode_dataset))
    encode.add_argument("file_path", help=_argument_docs(gpt2.encode_dataset).get("file_path"))
    add_flags(encode, gpt2.encode_dataset, NOT_FLAGS["encode_dataset"])

    export = commands.add_parser("export_saved_model", help="export a run or model as a TensorFlow SavedModel "
                                 "for serving", description=_summary(gpt2.export_saved_model))
    for name in ("source", "export_dir"):
        export.add_argument(name, help=_argument_docs(gpt2.export_saved_model).get(name))
    add_flags(export, gpt2.export_saved_model)

    export_hf = commands.add_parser("export_hf", help="write a run or model folder in Hugging Face's layout",
                                    description=_summary(gpt2.export_hf))
    for name in ("source", "out_dir"):
        export_hf.add_argument(name, help=_argument_docs(gpt2.export_hf).get(name))
    add_flags(export_hf, gpt2.export_hf)

    gguf = commands.add_parser("export_gguf", help="write one GGUF file for llama.cpp", description=_summary(gpt2.export_gguf))
    for name in ("source", "path"):
        gguf.add_argument(name, help=_argument_docs(gpt2.export_gguf).get(name))
    add_flags(gguf, gpt2.export_gguf, choices={"dtype": gpt2.formats.gguf.DTYPES})
    return parser


# ---------------------------------------------------------------------------------------------
# Subcommands


def _call_kwargs(args, function, skip=()):
    """The parsed values that `function` takes as keyword arguments."""
    names = inspect.signature(function).parameters
    return {k: v for k, v in vars(args).items() if k in names and k not in skip and k != "sess"}


def run_finetune(args):
    """Download the base model when a fresh run needs it, then fine-tune (gpt-2-simple's cmd_finetune)."""
    import gpt2_simple as gpt2
    from gpt2_simple.formats import checkpoint
    from gpt2_simple.formats.download import MODEL_ALIASES, MODEL_NAMES
    from gpt2_simple.model.names import run_folder

    if args.dataset and args.dataset_positional and args.dataset != args.dataset_positional:
        raise ValueError(f"two datasets given ({args.dataset_positional!r} and --dataset {args.dataset!r}); give one")
    dataset = args.dataset or args.dataset_positional
    if not dataset:
        raise ValueError("finetune needs a dataset: gpt2_simple finetune mytext.txt (or --dataset mytext.txt)")
    resuming = args.restore_from == "latest" and checkpoint.read_state(run_folder(args.checkpoint_dir, args.run_name))
    needs_base_model = args.restore_from == "fresh" or (args.restore_from == "latest" and not resuming)
    released = args.model_name in MODEL_NAMES or args.model_name in MODEL_ALIASES
    if needs_base_model and released and not gpt2.is_gpt2_downloaded(args.model_dir, args.model_name):
        gpt2.download_gpt2(model_dir=args.model_dir, model_name=args.model_name)
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, dataset, **_call_kwargs(args, gpt2.finetune, NOT_FLAGS["finetune"]))


def utc_stamp():
    """The time part of generated file names (gpt-2-simple's format); a function so tests can fix it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")


def _free_path(folder, stamp, index):
    """`folder/gpt2_gentext_<stamp>_<index>.txt`, with a suffix if that file already exists."""
    path, extra = os.path.join(folder, f"gpt2_gentext_{stamp}_{index}.txt"), 1
    while os.path.exists(path):
        path, extra = os.path.join(folder, f"gpt2_gentext_{stamp}_{index}-{extra}.txt"), extra + 1
    return path


def run_generate(args):
    """Load the run (or pretrained model) once, then write `nfiles` files or print to stdout.

    With --seed S, file i uses seed S + i, so the files differ but the command is repeatable.
    Unlike gpt-2-simple, the folder is never emptied and existing files are never replaced.
    """
    import gpt2_simple as gpt2

    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, **_call_kwargs(args, gpt2.load_gpt2, NOT_FLAGS["load_gpt2"]))
    seeds = [None if args.seed is None else args.seed + i for i in range(args.nfiles)]
    if args.stdout:
        kwargs = _call_kwargs(args, gpt2.generate, NOT_FLAGS["generate"])
        for seed in seeds:
            gpt2.generate(sess, **dict(kwargs, seed=seed))
        return
    kwargs = _call_kwargs(args, gpt2.generate_to_file, NOT_FLAGS["generate"])
    os.makedirs(args.folder, exist_ok=True)
    stamp = utc_stamp()
    for i, seed in enumerate(seeds):
        path = _free_path(args.folder, stamp, i)
        gpt2.generate_to_file(sess, **dict(kwargs, seed=seed, destination_path=path))
        print(f"Wrote {path}")


def run_download(args):
    import gpt2_simple as gpt2

    model_name = args.model_name_positional or args.model_name
    kwargs = _call_kwargs(args, gpt2.download_gpt2, NOT_FLAGS["download_gpt2"])
    gpt2.download_gpt2(model_name=model_name, **kwargs)


def run_encode(args):
    import gpt2_simple as gpt2

    gpt2.encode_dataset(args.file_path, **_call_kwargs(args, gpt2.encode_dataset, NOT_FLAGS["encode_dataset"]))


def run_export(args):
    import gpt2_simple as gpt2

    print("Wrote", gpt2.export_saved_model(args.source, args.export_dir, checkpoint=args.checkpoint,
                                           overwrite=args.overwrite))


def run_export_hf(args):
    import gpt2_simple as gpt2

    print("Wrote", gpt2.export_hf(**_call_kwargs(args, gpt2.export_hf)))


def run_export_gguf(args):
    import gpt2_simple as gpt2
    print("Wrote", gpt2.export_gguf(**_call_kwargs(args, gpt2.export_gguf)))


COMMANDS = {"finetune": run_finetune, "generate": run_generate, "download": run_download, "encode": run_encode,
            "export_saved_model": run_export, "export_hf": run_export_hf, "export_gguf": run_export_gguf}


# ---------------------------------------------------------------------------------------------
# Entry point


def _one_line(error):
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv=None):
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code.

    0: done. 2: bad arguments, or an error the user can fix (a ValueError or OSError from the
    library, e.g. a missing file or a failed download), printed as one line without a traceback.
    130: interrupted with Ctrl-C.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits after --help (0) and after usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as e:  # OSError covers FileNotFoundError and download.DownloadError
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
