"""The `gpt2_simple` command: finetune, generate, download and encode from a shell.

This module owns argument parsing and nothing else: each subcommand's flags are named as the
Python function's arguments and take their defaults from its signature, so the command line
and the library cannot disagree. Booleans accept `--flag`, `--flag true` and `--flag False`
(gpt-2-simple's CLI style). Errors a user can fix are printed as one line, exit code 2.

    gpt2_simple finetune mytext.txt --model_name 124M --steps 1000
    gpt2_simple generate --run_name run1 --nsamples 5 --length 200 --stdout
    gpt2_simple download 355M
    gpt2_simple encode big.txt --out_path big.npz
"""
import argparse
import datetime
import inspect
import os
import sys

SKIP = {"sess", "return_as_list", "destination_path", "sample_dir", "reuse"}
INT_WHEN_NONE = {"seed"}  # arguments whose default is None but whose values are integers
HELP = "default: %(default)r"


def _bool(text):
    if isinstance(text, bool):
        return text
    if text.lower() in ("true", "1", "yes", "y"):
        return True
    if text.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_flags(parser, function, skip=()):
    """One `--name` flag per argument of `function`, with its default and type."""
    for name, param in inspect.signature(function).parameters.items():
        if name in SKIP or name in skip or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        flag = "--" + name
        if isinstance(default, bool):
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=default, metavar="BOOL", help=HELP)
        elif default is None:
            parser.add_argument(flag, type=int if name in INT_WHEN_NONE else str, default=None, help=HELP)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=HELP)


def build_parser():
    import gpt2_simple as gpt2

    parser = argparse.ArgumentParser(prog="gpt2_simple", description="Fine-tune GPT-2 and generate text.")
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser("finetune", help="fine-tune a model on a dataset")
    finetune.add_argument("dataset_positional", nargs="?", metavar="dataset", help="text, csv or npz file, folder or glob")
    finetune.add_argument("--dataset", default=None)
    _add_flags(finetune, gpt2.finetune, skip={"dataset"})

    generate = commands.add_parser("generate", help="generate text from a run (or a pretrained model)")
    _add_flags(generate, gpt2.generate)
    generate.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint such as model-1000")
    generate.add_argument("--nfiles", type=int, default=1, help="number of files to write")
    generate.add_argument("--folder", default="gen", help="folder for the files (never emptied)")
    generate.add_argument("--stdout", action="store_true", help="print the texts instead of writing files")

    download = commands.add_parser("download", help="download a released GPT-2 model")
    download.add_argument("model_name", nargs="?", default=inspect.signature(gpt2.download_gpt2).parameters["model_name"].default)
    _add_flags(download, gpt2.download_gpt2, skip={"model_name"})

    encode = commands.add_parser("encode", help="pre-encode a dataset to .npz")
    encode.add_argument("file_path")
    _add_flags(encode, gpt2.encode_dataset, skip={"file_path"})
    return parser


def _kwargs(args, function, skip=()):
    names = inspect.signature(function).parameters
    return {k: v for k, v in vars(args).items() if k in names and k not in SKIP and k not in skip}


def run_finetune(args):
    import gpt2_simple as gpt2
    from gpt2_simple.download import MODEL_ALIASES, MODEL_NAMES

    dataset = args.dataset or args.dataset_positional
    if not dataset:
        raise ValueError("finetune needs a dataset: gpt2_simple finetune mytext.txt (or --dataset mytext.txt)")
    run_has_checkpoint = os.path.isfile(os.path.join(args.checkpoint_dir, args.run_name, "checkpoint"))
    resuming = args.restore_from == "latest" and run_has_checkpoint
    released = args.model_name in MODEL_NAMES or args.model_name in MODEL_ALIASES
    if released and not resuming and not gpt2.is_gpt2_downloaded(args.model_dir, args.model_name):
        gpt2.download_gpt2(model_dir=args.model_dir, model_name=args.model_name)
    gpt2.finetune(gpt2.start_tf_sess(), dataset, **_kwargs(args, gpt2.finetune, skip={"dataset"}))


def run_generate(args):
    import gpt2_simple as gpt2

    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, checkpoint=args.checkpoint, run_name=args.run_name, checkpoint_dir=args.checkpoint_dir,
                   model_name=args.model_name, model_dir=args.model_dir)
    kwargs = _kwargs(args, gpt2.generate)
    if args.stdout:
        gpt2.generate(sess, **kwargs)
        return
    os.makedirs(args.folder, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
    for i in range(args.nfiles):
        path = os.path.join(args.folder, f"gpt2_gentext_{stamp}_{i}.txt")
        seed = None if args.seed is None else args.seed + i
        gpt2.generate(sess, destination_path=path, **dict(kwargs, seed=seed))
        print("Wrote", path)


def run_download(args):
    import gpt2_simple as gpt2

    gpt2.download_gpt2(**_kwargs(args, gpt2.download_gpt2))


def run_encode(args):
    import gpt2_simple as gpt2

    gpt2.encode_dataset(args.file_path, **_kwargs(args, gpt2.encode_dataset, skip={"file_path"}))


COMMANDS = {"finetune": run_finetune, "generate": run_generate, "download": run_download, "encode": run_encode}


def main(argv=None):
    """Run the command line; returns the exit code."""
    from gpt2_simple.download import DownloadError

    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, DownloadError) as e:
        print(f"gpt2_simple: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
