"""An error's message on one line, as every error the library shows a user is.

This module owns folding an exception's text (which another library may spread over many lines,
a traceback's worth for TensorFlow) into one line for a message of ours: the command line's
`gpt2_simple: error: ...`, a checkpoint or a file that cannot be read.
"""


def one_line(error, limit=None, *, first=False):
    """`error`'s message with its white space folded onto one line, or its type's name.

    Args:
        error: an exception (or its text).
        limit: at most this many characters (None: all).
        first: only the message's first line (TensorFlow's errors put the gist there, then a trace).
    """
    text = str(error).strip()
    text = " ".join((text.splitlines()[0] if first and text else text).split())
    return (text if limit is None else text[:limit]) or type(error).__name__
