"""Chat templates: messages -> text, which of it the assistant wrote, and the run folder's `chat_template.jinja`.

This module owns the one chat template a run has, from training to every reader. A template is
Jinja text as Hugging Face tokenizers, llama.cpp and vLLM read it (seeing `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`). GPT-2 ships none, so two are built in:

- `gpt2` (the default): one `role: content` line a message, and an assistant turn
  `assistant: content<|endoftext|>`; the generation prompt is `assistant:`. A reply ends with
  end-of-text, the token every reader stops at by default, so no stop strings are needed.
- `dialogpt`: DialoGPT's convention, each turn's text followed by `<|endoftext|>`, no roles.

Both are rendered here in Python (training needs no Jinja2) and equal their Jinja text, which
marks each assistant turn with `{% generation %}` so transformers'
`return_assistant_tokens_mask` finds the same tokens. A template from a file is rendered with
Jinja2 (the `[serve]` extra): its `{% generation %}` blocks mark what the assistant wrote; a
template without them is asked where each assistant turn begins and ends by rendering the
conversation up to it (`spans`). What a run trained with is its folder's `chat_template.jinja`
(`read_run_template`, `write_run_template`); a run without one reads chats with `gpt2`.
It does not own the data shapes (`training/chats.py`) or the chat endpoint (`serving/openai_chat.py`).
"""
import json
import os
import re

from ..atomic import open_atomic

FILE = "chat_template.jinja"
EOS = "<|endoftext|>"
PRESETS = {
    "gpt2": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ 'assistant:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
        "{% else %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    ),
    "dialogpt": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use marks around a rendered generation block, removed after
_REPLY, _NEXT = "\x00reply\x00", "\x00next\x00"  # stand-ins for a reply and the turn after it
INSTALL_JINJA = 'pip install "gpt2_simple[serve]" (or pip install jinja2)'


ROLES = ("system", "user", "assistant", "developer", "tool")


def check_messages(messages, field="messages"):
    """`messages` as [{"role", "content"}] with string content (None -> ""); a one-line ValueError naming `field`."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{field} must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), (str, type(None))):
            raise ValueError(f"each message in {field} needs a role among {', '.join(ROLES)} and string content; "
                             f"got {json.dumps(m, default=repr)[:80]}")
        out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


class TemplateError(ValueError):
    """A template that cannot render a conversation (raise_exception(), or a bug in the template)."""


def source_of(chat_template):
    """Template text for a `chat_template` argument: None or a preset name -> its Jinja text; else a file's text.

    Raises:
        FileNotFoundError: a name that is neither a preset nor a file.
        ValueError: a file that is not a valid template (checked by compiling it).
    """
    if chat_template is None:
        return PRESETS["gpt2"]
    if chat_template in PRESETS:
        return PRESETS[chat_template]
    if not os.path.isfile(chat_template):
        raise FileNotFoundError(f"chat_template={chat_template!r} is neither a built-in template "
                                f"({', '.join(PRESETS)}) nor a file; pass one of those or a Jinja template file")
    with open(chat_template, encoding="utf-8") as f:
        text = f.read()
    ChatTemplate(text)  # a bad template fails now, before any model loads
    return text


def read_run_template(run_dir):
    """The template text a folder keeps: a run's (or an export's) `chat_template.jinja`, else a Hugging Face
    folder's `chat_template` in `tokenizer_config.json`; None when it has none."""
    path = os.path.join(run_dir, FILE) if run_dir else None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    config = os.path.join(run_dir, "tokenizer_config.json") if run_dir else None
    if config and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            try:
                template = json.load(f).get("chat_template")
            except (json.JSONDecodeError, AttributeError):
                return None
        return template if isinstance(template, str) else None  # a list of named templates: not read
    return None


def write_run_template(folder, source):
    """Write `source` as `folder/chat_template.jinja`, atomically."""
    with open_atomic(os.path.join(folder, FILE), "w", encoding="utf-8", newline="") as f:
        f.write(source)


class ChatTemplate:
    """Messages -> text, with the character spans of what the assistant wrote.

    Attributes:
        source: the Jinja text (a preset's or a file's).
        preset: the preset's name when `source` is one (rendered in Python), else None.
    """

    def __init__(self, source=None, *, eos_token=EOS):
        self.source = PRESETS["gpt2"] if source is None else source
        self.eos_token = eos_token
        self.preset = next((name for name, text in PRESETS.items() if text == self.source), None)
        self._jinja = None if self.preset else _compile(self.source)
        self._marks = "{% generation" in self.source
        self.turn_end = self._turn_end()

    def render(self, messages, add_generation_prompt=True):
        """The text of `messages` (dicts with `role` and string `content`).

        Raises:
            TemplateError: the template refuses the messages.
        """
        if self.preset:
            return _render_preset(self.preset, messages, add_generation_prompt, self.eos_token)[0]
        return _unmark(self._render_jinja(messages, add_generation_prompt))[0]

    def spans(self, messages, add_generation_prompt=False):
        """(text, [(start, end), ...]): the rendered text and the character spans the assistant wrote.

        Raises:
            TemplateError: the template refuses the messages or cannot mark the assistant's turns.
        """
        if self.preset:
            return _render_preset(self.preset, messages, add_generation_prompt, self.eos_token)
        if self._marks:
            return _unmark(self._render_jinja(messages, add_generation_prompt))
        text = self._render_jinja(messages, add_generation_prompt)
        return text, self._prefix_spans(messages, text)

    def _turn_end(self):
        """What begins the next turn, up to its first line: a stop for replies, beside end-of-text.

        The built-in `gpt2` template: "\nuser:", as a model not trained on chats writes the next turn
        (one trained on them ends its reply with end-of-text first); ChatML: "<|im_end|>"; "" when the
        template marks none (`dialogpt`: end-of-text alone).
        """
        if self.preset:
            return "\nuser:" if self.preset == "gpt2" else ""
        try:
            text = ChatTemplate.render(self, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _REPLY},
                                              {"role": "user", "content": _NEXT}], add_generation_prompt=False)
        except TemplateError as e:
            raise ValueError(f"chat_template fails on a plain user/assistant/user chat: {e}") from None
        start, end = text.find(_REPLY), text.find(_NEXT)
        between = text[start + len(_REPLY):end].rstrip() if 0 <= start < end else ""
        body = between.lstrip("\n")
        if "\n" in body:  # "<|im_end|>\n<|im_start|>user": the turn has ended at its first line
            between = between[:len(between) - len(body) + body.index("\n")]
        return "" if between.startswith(self.eos_token) else between  # end-of-text ends every reply already

    def _render_jinja(self, messages, add_generation_prompt):
        import jinja2

        try:
            return self._jinja.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=self.eos_token, eos_token=self.eos_token)
        except (jinja2.TemplateError, ValueError, TypeError) as e:  # raise_exception(), or a template bug
            raise TemplateError(f"the chat template cannot render these messages: {e}") from None

    def _prefix_spans(self, messages, text):
        """Spans of a template without generation blocks: each assistant turn is what rendering it adds
        to the conversation before it, as asked for with add_generation_prompt."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render_jinja(messages[:i], True) if i else self._render_jinja([], True)
            through = self._render_jinja(messages[:i + 1], False)
            if not (through.startswith(before) and text.startswith(through)):
                raise TemplateError(f"the chat template renders message {i + 1} so that the conversation before "
                                    "it is not a prefix of it, so the assistant's tokens cannot be found; mark them "
                                    "with {% generation %} ... {% endgeneration %}, or train with train_on='all'")
            spans.append((len(before), len(through)))
        return spans


def _render_preset(name, messages, add_generation_prompt, eos):
    parts, spans, at = [], [], 0
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant":
            head, body = ("assistant:", " " + content + eos) if name == "gpt2" else ("", content + eos)
            spans.append((at + len(head), at + len(head) + len(body)))
            piece = head + body
        else:
            piece = f"{message['role']}: {content}\n" if name == "gpt2" else content + eos
        parts.append(piece)
        at += len(piece)
    if add_generation_prompt and name == "gpt2":
        parts.append("assistant:")
    return "".join(parts), spans


def _unmark(marked):
    """Remove the generation marks from rendered text: (text, the spans they enclosed)."""
    text, spans, start, at = [], [], 0, 0
    for piece in re.split(f"([{_OPEN}{_CLOSE}])", marked):
        if piece == _OPEN:
            start = at
        elif piece == _CLOSE:
            spans.append((start, at))
        else:
            text.append(piece)
            at += len(piece)
    return "".join(text), [span for span in spans if span[1] > span[0]]


def _compile(source):
    try:
        import jinja2
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ModuleNotFoundError(f"a chat template from a file needs Jinja2; install it with: "
                                  f"{INSTALL_JINJA}") from None

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`, Hugging Face's mark of what the assistant writes."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _OPEN + caller() + _CLOSE

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation])
        env.globals["raise_exception"] = _raise  # Hugging Face's templates call it on messages they refuse
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat_template is not a valid Jinja template: {e}") from None


def _raise(message):
    raise ValueError(message)
