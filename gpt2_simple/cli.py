"""The `gpt2_simple` command: finetune, generate, download, encode and export from a shell.

This module owns the subcommands and the entry point. Each subcommand's flags are named as the
Python function's arguments and take their defaults, types and help from its signature and
docstring (`cli_flags.py`), so the command line and the library cannot disagree. Booleans accept `--flag`,
`--flag true` and `--flag False` (gpt-2-simple's CLI style). Errors a user can fix are printed
as one line with exit code 2; `main` returns the exit code and never calls `sys.exit`.

    gpt2_simple finetune mytext.txt --model_name 124M --steps 1000
    gpt2_simple finetune chats.jsonl --model_name hf://distilbert/distilgpt2 --steps 1000   # docs/chat.md
    gpt2_simple generate --run_name run1 --nsamples 5 --length 200 --nfiles 2 --folder gen
    gpt2_simple generate --model_name 124M --prefix "Hello" --stdout
    gpt2_simple evaluate heldout.txt --run_name run1 --json
    gpt2_simple download 355M
    gpt2_simple encode big.txt --out_path big.npz
    gpt2_simple export_saved_model checkpoint/run1 exported/gpt2/1
    gpt2_simple export_hf checkpoint/run1 hf/run1
    gpt2_simple export_gguf checkpoint/run1 run1.gguf --dtype q8_0
    gpt2_simple push checkpoint/run1 me/my-gpt2 --private --gguf q8_0
    gpt2_simple serve --run_name run1 --run_name run2        # several runs; LoRA runs share their base
The library is imported inside the functions below, never when this module is imported.
"""
import contextlib
import datetime
import inspect
import os
import sys

from .cli_flags import (
    PROG,
    Parser,
    add_flags,
    argument_docs,
    json_messages,
    positive_int,
    shell_terms,
)
from .errors import one_line

DEMO_STEPS = 10  # `gpt2_simple finetune` without a dataset: steps on the bundled text
FINETUNE_EXAMPLE = ("example, one tweet per line or .jsonl record, one tweet per sample: gpt2_simple finetune "
                    "tweets.jsonl --line_by_line --steps 2000 --learning_rate_schedule cosine --warmup_steps 100 "
                    "--val_dataset heldout.jsonl --val_every 100 --keep_best --early_stopping_patience 5")
# Arguments that are not flags: the session, and options that mean nothing in a fresh process
# or that the subcommand sets itself (generate's output goes to --folder or --stdout); logit_bias
# is a dict of token ids, for Python and the server.
NOT_FLAGS = {
    "finetune": {"sess", "dataset", "reuse"},
    "load_gpt2": {"sess", "reuse"},
    "generate": {"sess", "sample_dir", "return_as_list", "destination_path", "logit_bias"},
    "download_gpt2": {"model_name"},
    "encode_dataset": {"file_path"},
    "evaluate": {"sess", "dataset", "print_table"},
}


def _summary(function):
    return (inspect.getdoc(function) or "").split("\n")[0]


def build_parser():
    """The `gpt2_simple` parser with its subcommands."""
    import gpt2_simple as gpt2
    from gpt2_simple.formats.gguf import DTYPES
    from gpt2_simple.training.optimizer import OPTIMIZERS

    parser = Parser(prog=PROG, description="Fine-tune OpenAI's GPT-2 on your text and generate from it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{finetune,generate,evaluate,download,encode,export_saved_model,export_hf,export_gguf,push,serve}")
    finetune = commands.add_parser("finetune", help="fine-tune a model on a dataset",
                                   description=_summary(gpt2.finetune), epilog=FINETUNE_EXAMPLE)
    finetune.add_argument("dataset_positional", nargs="?", metavar="dataset",
                          help="a .txt/.csv/.jsonl/.npz file, a folder or a glob (or use --dataset); without one, "
                               f"{DEMO_STEPS} steps on a bundled sample text (Shakespeare's sonnets)")
    finetune.add_argument("--dataset", help="the same as the positional dataset")
    add_flags(finetune, gpt2.finetune, NOT_FLAGS["finetune"], choices={"optimizer": OPTIMIZERS})
    finetune.add_argument("--workers", help="train on several machines: every worker's host:port, comma-separated, "
                          "the same list on each (writes TF_CONFIG unless it is set; docs/big-models.md)")
    finetune.add_argument("--worker_index", type=int, help="with --workers: this machine's place in the list, from 0 "
                          "(0 is the chief, which writes the run folder)")
    finetune.add_argument("--base_url", help="where a missing released model is downloaded from (a mirror "
                          "serving <base_url>/models/<model_name>/<file>); default $GPT2_SIMPLE_BASE_URL, "
                          "then OpenAI's bucket")

    generate = commands.add_parser("generate", help="generate text from a run or a pretrained model",
                                   description="Load a fine-tuned run (or, with --model_name, a pretrained "
                                               "model) and write generated texts to files in --folder, or print "
                                               "them with --stdout.")
    loading = add_flags(generate, gpt2.load_gpt2, NOT_FLAGS["load_gpt2"])
    add_flags(generate, gpt2.generate, NOT_FLAGS["generate"] | set(loading))
    generate.add_argument("--nfiles", type=positive_int, default=1,
                          help="number of files to write, each with nsamples texts (default: %(default)r)")
    generate.add_argument("--folder", default="gen",
                          help="folder for the files; created if missing, never emptied (default: %(default)r)")
    generate.add_argument("--stdout", action="store_true", help="print the texts instead of writing files")
    generate.add_argument("--stream", action="store_true", help="print one text as it is generated")

    evaluate = commands.add_parser("evaluate", help="score held-out text with each checkpoint of a run and its "
                                   "base model", description=_summary(gpt2.evaluate))
    evaluate.add_argument("dataset", help=argument_docs(gpt2.evaluate).get("dataset"))
    add_flags(evaluate, gpt2.evaluate, NOT_FLAGS["evaluate"])
    evaluate.add_argument("--json", action="store_true", help="print one JSON object per model instead of the table")

    download = commands.add_parser("download", help="download a released GPT-2 model",
                                   description=_summary(gpt2.download_gpt2))
    model_name = inspect.signature(gpt2.download_gpt2).parameters["model_name"].default
    download.add_argument("model_name_positional", nargs="?", metavar="model_name",
                          help=argument_docs(gpt2.download_gpt2).get("model_name"))
    download.add_argument("--model_name", default=model_name, help="the same as the positional model_name (default: %(default)r)")
    add_flags(download, gpt2.download_gpt2, NOT_FLAGS["download_gpt2"])

    encode = commands.add_parser("encode", help="encode a dataset once into an .npz for finetune",
                                 description=_summary(gpt2.encode_dataset))
    encode.add_argument("file_path", help=argument_docs(gpt2.encode_dataset).get("file_path"))
    add_flags(encode, gpt2.encode_dataset, NOT_FLAGS["encode_dataset"])

    _add_exports(commands, gpt2, DTYPES)
    add_flags(commands.add_parser("serve", help="serve runs or a model over HTTP: OpenAI's API and a web page",
                                  description=_summary(gpt2.serve)), gpt2.serve, {"sess", "run_names"}, repeated={"run_name"})
    return parser


def _add_exports(commands, gpt2, dtypes):
    """The export subcommands and push: each takes its source folder and its destination as positionals."""
    exports = (("export_saved_model", gpt2.export_saved_model, "export_dir", "export a run or model as a "
                "TensorFlow SavedModel for serving", {}),
               ("push", gpt2.push_to_hub, "repo", "upload a run to the Hugging Face Hub as a model repository",
                {"gguf": dtypes}),
               ("export_hf", gpt2.export_hf, "out_dir", "write a run or model folder in Hugging Face's layout", {}),
               ("export_gguf", gpt2.export_gguf, "path", "write one GGUF file for llama.cpp", {"dtype": dtypes}))
    for command, function, destination, help_text, choices in exports:
        parser = commands.add_parser(command, help=help_text, description=_summary(function))
        for name in ("source", destination):
            parser.add_argument(name, help=argument_docs(function).get(name))
        add_flags(parser, function, choices=choices)


# ---------------------------------------------------------------------------------------------
# Subcommands


def _call_kwargs(args, function, skip=()):
    """The parsed values that `function` takes as keyword arguments."""
    names = inspect.signature(function).parameters
    return {k: v for k, v in vars(args).items() if k in names and k not in skip and k != "sess"}


def run_finetune(args):
    """Download the base model when a fresh run needs it, then fine-tune (gpt-2-simple's cmd_finetune).

    Without a dataset it fine-tunes for DEMO_STEPS steps (unless --steps says otherwise) on the
    bundled sample text and prints a sample: the whole job in one command.
    """
    import gpt2_simple as gpt2
    from gpt2_simple.formats import checkpoint
    from gpt2_simple.formats.download import MODEL_ALIASES, MODEL_NAMES
    from gpt2_simple.model.names import run_folder
    from gpt2_simple.training.dataset import resolve_paths

    if args.dataset and args.dataset_positional and args.dataset != args.dataset_positional:
        raise ValueError(f"two datasets given ({args.dataset_positional!r} and --dataset {args.dataset!r}); give one")
    dataset = args.dataset or args.dataset_positional
    if args.workers is not None or args.worker_index is not None:  # before TensorFlow reads TF_CONFIG
        from gpt2_simple.training.distribute import join_cluster

        if args.strategy not in (None, "multi_worker"):
            raise ValueError(f"--workers trains on several machines with --strategy multi_worker, not "
                             f"--strategy {args.strategy}; leave --strategy out")
        join_cluster(args.workers, args.worker_index)
        args.strategy = "multi_worker"
    demo = not dataset
    if demo:
        dataset = SAMPLE_TEXT
        if args.steps == -1:
            args.steps = DEMO_STEPS
        print(f"No dataset given: fine-tuning on a bundled sample text (12 of Shakespeare's sonnets, public "
              f"domain) for {args.steps} steps, then printing a sample. Your own: {PROG} finetune mytext.txt")
    resuming = args.restore_from == "latest" and checkpoint.read_state(run_folder(args.checkpoint_dir, args.run_name))
    needs_base_model = args.restore_from == "fresh" or (args.restore_from == "latest" and not resuming)
    released = args.model_name in MODEL_NAMES or args.model_name in MODEL_ALIASES
    if needs_base_model and released and not gpt2.is_gpt2_downloaded(args.model_dir, args.model_name):
        for path in (dataset, args.val_dataset):  # a missing dataset fails before a long download
            if path is not None:
                resolve_paths(path)
        gpt2.download_gpt2(model_dir=args.model_dir, model_name=args.model_name, base_url=args.base_url)
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, dataset, **_call_kwargs(args, gpt2.finetune, NOT_FLAGS["finetune"]))
    if demo:
        print("A sample from the fine-tuned model:")
        gpt2.generate(sess, length=100, nsamples=1, seed=args.seed)


SAMPLE_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sonnets.txt")


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
    from gpt2_simple.generation.call import check_options
    from gpt2_simple.generation.copy_guard import check_span

    check_options(args.nsamples, args.batch_size, args.length, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p)
    args.messages = json_messages(args.messages)
    if args.stream and args.copy_threshold is not None:
        raise ValueError(f"--copy_threshold {args.copy_threshold} cannot drop a streamed text (it is printed before "
                         "it is checked); leave out --stream, or use --check_copies to print its mark")
    sess = gpt2.start_tf_sess()
    # With --stdout or --stream, standard output holds only the texts: status lines go to standard error.
    with contextlib.redirect_stdout(sys.stderr if args.stdout or args.stream else sys.stdout):
        gpt2.load_gpt2(sess, **_call_kwargs(args, gpt2.load_gpt2, NOT_FLAGS["load_gpt2"]))
        if args.check_copies or args.copy_threshold:  # the index's "Loading dataset" lines stay off the texts
            sess.copy_index(args.training_data)
        if args.avoid_copies:
            sess.copy_guard(check_span(args.avoid_copies), args.training_data)
    seeds = [None if args.seed is None else args.seed + i for i in range(args.nfiles)]
    if args.stream:
        for seed in seeds:  # one text per seed, printed piece by piece as it is made
            piece = ""
            for piece in gpt2.generate_stream(sess, **dict(_call_kwargs(args, gpt2.generate_stream), seed=seed)):
                print(piece, end="", flush=True)
            print()
            if getattr(piece, "copy", None):  # --check_copies: the last piece carries the mark
                print(f"[{piece.copy.mark()}]")
        return
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


def run_evaluate(args):
    """Print the held-out table, or with --json one JSON line per model (status lines go to standard error)."""
    import json

    import gpt2_simple as gpt2

    kwargs = _call_kwargs(args, gpt2.evaluate, NOT_FLAGS["evaluate"])
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        rows = gpt2.evaluate(gpt2.start_tf_sess(), args.dataset, print_table=not args.json, **kwargs)
    if args.json:
        for row in rows:
            print(json.dumps(row))


def run_download(args):
    import gpt2_simple as gpt2

    model_name = args.model_name_positional or args.model_name
    kwargs = _call_kwargs(args, gpt2.download_gpt2, NOT_FLAGS["download_gpt2"])
    gpt2.download_gpt2(model_name=model_name, **kwargs)


def run_encode(args):
    import gpt2_simple as gpt2

    gpt2.encode_dataset(args.file_path, **_call_kwargs(args, gpt2.encode_dataset, NOT_FLAGS["encode_dataset"]))


def _run_export(name):
    """The subcommand that calls `gpt2.<name>` (an export) with its arguments and prints what it wrote."""
    def run(args):
        import gpt2_simple as gpt2

        function = getattr(gpt2, name)
        print("Wrote", function(**_call_kwargs(args, function)))

    return run


def run_serve(args):
    import gpt2_simple as gpt2

    names = args.run_name or ["run1"]  # --run_name a --run_name b: several runs (docs/serving.md, "Many fine-tunes")
    gpt2.serve(**dict(_call_kwargs(args, gpt2.serve), run_name=names[0], run_names=names if len(names) > 1 else None))


COMMANDS = {"finetune": run_finetune, "generate": run_generate, "evaluate": run_evaluate, "download": run_download, "encode": run_encode,
            **{name: _run_export(name) for name in ("export_saved_model", "export_hf", "export_gguf")},
            "push": _run_export("push_to_hub"), "serve": run_serve}


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv=None):
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code.

    0: done. 2: bad arguments, or an error the user can fix (a ValueError or OSError from the
    library, e.g. a missing file or a failed download), printed as one line without a traceback,
    in shell terms (flags, commands). 130: interrupted with Ctrl-C.

    TensorFlow's native notices are filtered out below `TF_CPP_MIN_LOG_LEVEL` (default 3 here; see
    `quiet.py`); set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
    """
    from gpt2_simple import quiet

    with quiet.filtered_stderr(quiet.set_log_level()):
        return _main(argv)


def _main(argv):
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits after --help (0) and after usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except ImportError as e:  # gpt2_simple's own one-line message when TensorFlow is missing
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, ImportError) as e:  # OSError: a missing file, a download, a lost worker
        text = e.for_shell() if hasattr(e, "for_shell") else one_line(e)
        print(f"{PROG}: error: {shell_terms(one_line(text), set(vars(args)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

    return 0


if __name__ == "__main__":
    sys.exit(main())
