"""The command line's flags, read from the Python functions, and its words for errors.

This module owns turning a function's signature and Google-style docstring into argparse flags
(name, default, type and help from the function itself, so the command line and the library
cannot disagree), the parser that keeps bare boolean flags from swallowing the next argument and
reports usage errors in one line, and rewriting a library message in shell terms
(`name=value` -> `--name value`, `download_gpt2(...)` -> `gpt2_simple download ...`). The
subcommands themselves are `cli.py`'s.
"""
import argparse
import inspect
import json
import os
import re
import sys

PROG = "gpt2_simple"
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
INT_WHEN_NONE = {"seed", "early_stopping_patience", "copy_threshold"}  # arguments whose default is None but whose values are integers
FLOAT_WHEN_NONE = {"max_grad_norm"}
BOOL_WHEN_NONE = {"line_by_line", "packing"}  # None: as the run was trained; packing: for structured records
# Help in shell terms where the docstring's speaks Python.
SHELL_HELP = {
    "strategy": "data parallelism across devices: 'mirrored' (all local GPUs) or 'multi_worker' (machines "
                "listed in TF_CONFIG); TPUs are not supported",
}
CHOICES = {"strategy": ["mirrored", "multi_worker"], "save_optimizer": ["full", "bfloat16", "none"],
           "learning_rate_schedule": ["constant", "linear", "cosine"], "train_on": ["completion", "all"]}


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


class Parser(argparse.ArgumentParser):
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

    def error(self, message):
        """One line and a pointer to --help, instead of argparse's whole usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

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


def argument_docs(function):
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


def add_flags(parser, function, skip=(), choices=None, repeated=()):
    """One `--name` flag per argument of `function` that has a default; returns the names.

    The default, the type (the default's type; str for None, int for `seed`) and the help text
    all come from `function` itself. A flag in `repeated` may be given several times (a list; None without it).
    """
    docs = argument_docs(function)
    added = []
    for name, param in inspect.signature(function).parameters.items():
        if name in skip or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        text = SHELL_HELP.get(name) or docs.get(name, "")
        help_text = (text.replace("%", "%%") + " (default: %(default)r)").strip()
        options = dict(default=default, help=help_text, choices=(choices or {}).get(name) or CHOICES.get(name))
        if isinstance(default, bool) or (default is None and name in BOOL_WHEN_NONE):
            options.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif default is None:
            options.update(type=int if name in INT_WHEN_NONE else float if name in FLOAT_WHEN_NONE else str)
        else:
            options.update(type=type(default))
        if name in repeated:
            options.update(action="append", default=None, help=help_text.replace("(default:", "(repeat it for "
                                                                                  "several; default:"))
        parser.add_argument("--" + name, **options)
        added.append(name)
    return added


def json_messages(text):
    """--messages: a JSON list of {"role", "content"}, or a file holding one; None stays None."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--messages is not JSON ({e.msg}); pass a list such as '[{{\"role\": \"user\", "
                         f"\"content\": \"Hi\"}}]' or a .json file holding one") from None


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shell_terms(message, flags):
    """A library message in a shell user's words: `name=value` -> `--name value`, calls -> commands."""
    message = re.sub(r"(?:gpt2\.)?download_gpt2\((?:model_dir='([^']*)', )?model_name='([^']*)'\)",
                     lambda m: f"{PROG} download {m.group(2)}" + (
                         f" --model_dir {m.group(1)}" if m.group(1) not in (None, "models") else ""), message)
    value = r"('[^']*'|\"[^\"]*\"|-?[\w.+-]+)"

    def flag(match):
        name, given = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        if given in (None, "True"):  # a bare boolean flag means true
            return f"--{name}"
        return f"--{name} {'false' if given == 'False' else given}"

    return re.sub(r"(?<![\w.$-])(\w+)=" + value + "?", flag, message)
