"""What one server holds: its models by name, full models and LoRA runs sharing one base.

This module owns opening the runs `serve` is given and choosing among them per request. A LoRA
run (its adapters read from its checkpoint: an adapters-only save, or a merged save's
exact-resume companion) goes into the `AdapterTable` of its base, loaded once, and never has its
merged weights formed; the base itself is served too, as rows with no adapter. Any other run is
a full model with its own sampler and worker. Runs that cannot share are refused at start in one
line: a LoRA run over another base than the first one's, another vocabulary, more adapters than
`max_adapters`. `Catalog.pick` finds the model a request names (404 `model_not_found`), and
`load`/`unload` change the adapters while serving (vLLM's routes, behind
`--allow_adapter_updates`). What a request answers is `routes.py`'s; the adapter math is
`model/adapter_rows.py`'s.
"""
import dataclasses
import logging
import os
import threading

from encoder import Encoder
from encoder.vocab import read_vocab

from ..formats import adapters as run_adapters
from ..formats.checkpoint import find_checkpoint
from ..formats.folders import load_base, load_model
from ..generation.sample import Sampler
from ..generation.scores import LogprobScorer
from ..model import lora
from ..model.adapter_rows import BASE, AdapterTable
from ..model.names import run_folder
from ..session import Session
from . import openai_api as api
from .batcher import Batcher

LOG = logging.getLogger("gpt2_simple.serve")


@dataclasses.dataclass(eq=False)
class Engine:
    """One model in memory and its worker thread; over a LoRA base, the table of its adapters."""

    model: object
    batcher: Batcher
    table: AdapterTable = None
    base: tuple = None  # (base folder, its checkpoint, base_precision): what the adapters were trained on
    name: str = None  # the base's name in /v1/models


def adapter_run(folder):
    """(settings, {name: array}) of a LoRA run's latest checkpoint, or None for a full model."""
    return run_adapters.read_adapters(find_checkpoint(folder, "latest"))


class Catalog:
    """The models a server answers for, by name, in the order named (the first answers requests without `model`).

    Args:
        served: `served(name, sess, batcher, adapter, parent)` -> the `routes.Served` of one name.
        batcher_args: the `Batcher`'s keyword arguments (queue and batch limits).
        max_adapters: LoRA runs held at most.
        list_base: serve the LoRA runs' base under its own name too (not for one run served alone, which
            answers whatever `model` names, as it did before runs could share a server).
    """

    def __init__(self, served, batcher_args, *, max_adapters=16, list_base=True):
        self._served, self._batcher_args, self.max_adapters = served, batcher_args, max_adapters
        self.entries = {}  # name -> `routes.Served`
        self.engines = []
        self.vocab = None  # (folder, its Encoder): every model reads with that one
        self.first = None  # the name of the first model named: requests without `model` go there
        self._updating = threading.Lock()  # one adapter load or unload at a time
        self.list_base = list_base
        self.sizes = (1, 1)  # (adapters, largest rank) the adapter table is made for at first (`open_runs`)

    @property
    def default(self):
        return self.entries[self.first]

    @property
    def batchers(self):
        return [engine.batcher for engine in self.engines]

    def pick(self, body):
        """The `Served` a request body names in `model` (the first model without one; any name while only one is
        held, as before several could be); a 404 `model_not_found` otherwise."""
        name = body.get("model") if isinstance(body, dict) else None
        if name is None or len(self.entries) == 1:
            return self.default
        if name not in self.entries:
            raise api.APIError(404, f"The model `{name}` does not exist; this server has "
                                    f"{', '.join(self.entries)} (GET /v1/models)", "model", code="model_not_found")
        return self.entries[name]

    def adapters(self):
        """The LoRA runs, in the order served: llama.cpp's adapter ids (`lora: [{id, scale}]`) index this list."""
        return [s for s in self.entries.values() if s.parent is not None]

    def lora_alias(self, body, served):
        """(the `Served` whose base runs the request, (slot, scale)) from llama.cpp's `lora: [{id, scale}]`, or
        (`served`, its own adapter) without it; a 400 naming `lora` for what this server cannot do."""
        given = body.get("lora") if isinstance(body, dict) else None
        if given is None:
            return served, served.adapter
        listed = self.adapters()
        if not isinstance(given, list) or not all(isinstance(e, dict) and set(e) <= {"id", "scale"} and
                                                  isinstance(e.get("id"), int) for e in given):
            raise api.APIError(400, f"lora must be a list such as [{{\"id\": 0, \"scale\": 1.0}}], got {given!r}", "lora")
        on = [e for e in given if e.get("scale", 1.0) != 0]
        if len(on) > 1:
            raise api.APIError(400, "lora: this server applies one adapter a request; give the others scale 0", "lora")
        if any(not 0 <= e["id"] < len(listed) for e in given):
            raise api.APIError(400, f"lora: adapter ids are 0 to {len(listed) - 1} (the LoRA runs in /v1/models' "
                                    f"order), got {[e['id'] for e in given]}", "lora")
        if served.parent is not None and body.get("model") is None:  # the first model is a LoRA run: its base
            served = self.entries.get(served.parent, served)
        if served.parent is not None or (on and listed[on[0]["id"]].batcher is not served.batcher):
            raise api.APIError(400, "lora: name the base model in `model` (or leave it out), not a LoRA run", "lora")
        if not on:
            return served, BASE
        scale = api.number(on[0], "scale", 1.0, -100.0, 100.0)
        return served, (listed[on[0]["id"]].adapter[0], float(scale))

    def add_session(self, sess, name):
        """Serve the model in `sess` (a full model) under `name`."""
        self._encoder(sess.folder, sess.encoder)
        engine = Engine(sess.model, self._batcher(sess.sampler, LogprobScorer(sess.model), sess.encoder))
        self.engines.append(engine)
        return self._enter(name, sess, engine.batcher, BASE, None)

    def _enter(self, name, sess, batcher, adapter, parent, *, named=True):
        """Answer for `name` from now on (one rebinding of `entries`: a request's thread sees it whole or not);
        `named`: a model `serve` was given (the first one answers requests without `model`), not a listed base."""
        self.entries = {**self.entries, name: self._served(name, sess, batcher, adapter, parent)}
        self.first = self.first or (name if named else None)
        return self.entries[name]

    def add_run(self, name, folder, found):
        """Serve the run in `folder` under `name`: a LoRA run over the shared base, else a full model.

        `found`: what `adapter_run(folder)` read (its caller has read it already).
        """
        if name in self.entries:
            raise ValueError(f"a model named {name!r} is served already; pick another name")
        if found is None:
            return self.add_run_whole(name, folder)
        settings, arrays = found
        try:
            engine = self._base_engine(settings, folder)
        except FileNotFoundError:  # the base is gone: a merged save still serves alone, as a full model
            if run_adapters.is_adapter_bundle(find_checkpoint(folder, "latest")):
                raise
            LOG.warning("%s: its LoRA base is missing, so it is served as its merged weights, a model of its own", folder)
            return self.add_run_whole(name, folder)
        if len(engine.table.ranks) >= self.max_adapters:
            raise ValueError(f"{folder} would be LoRA run number {len(engine.table.ranks) + 1}, but max_adapters="
                             f"{self.max_adapters}; raise --max_adapters or serve fewer runs")
        encoder = self._encoder(folder)
        config = lora.check_settings(settings["rank"], settings["alpha"], settings["targets"])
        slot = engine.table.add(config, arrays, source=folder)
        sess = Session()
        sess.set_model(engine.model, encoder, folder)  # its own copy index; the base's weights
        return self._enter(name, sess, engine.batcher, (slot, 1.0), engine.name)

    def add_run_whole(self, name, folder):
        """Serve the run in `folder` under `name` as a model of its own (its merged weights, for a LoRA run)."""
        sess = Session()
        sess.set_model(load_model(folder), self._encoder(folder), folder)
        return self.add_session(sess, name)

    def load(self, name, folder):
        """vLLM's `load_lora_adapter`: serve the LoRA run in `folder` as `name` (a 400 naming the field otherwise)."""
        with self._updating:
            if not isinstance(name, str) or not name or name in self.entries:
                raise api.APIError(400, f"lora_name={name!r} must be a new name; this server has "
                                        f"{', '.join(self.entries)}", "lora_name")
            if not isinstance(folder, str) or not os.path.isdir(folder):
                raise api.APIError(400, f"lora_path={folder!r} is not a folder on the server; give a LoRA run's "
                                        "folder (checkpoint/<run_name>)", "lora_path")
            try:
                found = adapter_run(folder)
                if found is None:
                    raise ValueError(f"{folder} is not a LoRA run (no adapters in its latest checkpoint)")
                self.add_run(name, folder, found)
            except (FileNotFoundError, ValueError) as e:
                raise api.APIError(400, f"lora_path: {e}", "lora_path") from None

    def unload(self, name):
        """vLLM's `unload_lora_adapter`: stop serving the LoRA run `name` once its rows have ended (new requests for
        it get 404 at once)."""
        with self._updating:
            served = self.entries.get(name)
            if served is None or served.parent is None:
                raise api.APIError(404 if served is None else 400, f"lora_name={name!r} is not a LoRA run this server "
                                   f"holds; it has {', '.join(s.name for s in self.adapters()) or 'none'}",
                                   "lora_name", code="model_not_found" if served is None else None)
            if name == self.first:
                raise api.APIError(400, f"lora_name={name!r} answers requests without `model`; it stays", "lora_name")
            self.entries = {k: v for k, v in self.entries.items() if k != name}  # one rebinding: readers see either
            engine = next(e for e in self.engines if e.batcher is served.batcher)
            served.batcher.wait_unused(served.adapter[0])
            engine.table.remove(served.adapter[0])

    def _base_engine(self, settings, folder):
        """The engine of the base `settings` name, loaded the first time; a ValueError for another base."""
        base_dir = run_adapters.base_folder(settings, folder)
        key = (os.path.realpath(base_dir), settings["base_checkpoint"], settings.get("base_precision") or "float32")
        for engine in self.engines:
            if engine.base is not None:
                if engine.base != key:
                    raise ValueError(f"{folder} is LoRA over {_described(key)}, but the runs before it are over "
                                     f"{_described(engine.base)}; serve runs of one base together")
                return engine
        model = load_base(base_dir, settings["base_checkpoint"], base_precision=settings.get("base_precision"))
        if key[2] != "float32":
            lora.freeze(model, lora.BASE_PRECISIONS["float32"])  # a 16-bit base's rounded values, computed in float32
        table = AdapterTable(model.hparams, capacity=self.sizes[0], rank=self.sizes[1])
        encoder = self._encoder(base_dir)
        engine = Engine(model, self._batcher(Sampler(model, adapters=table), LogprobScorer(model, table), encoder),
                        table, key, os.path.basename(os.path.normpath(base_dir)) or "base")
        self.engines.append(engine)
        sess = Session()
        sess.set_model(model, encoder, base_dir)
        if self.list_base and engine.name not in self.entries:  # the base itself: rows with no adapter
            self._enter(engine.name, sess, engine.batcher, BASE, None, named=False)
        return engine

    def _batcher(self, sampler, scorer, encoder):
        sampler.sample([[encoder.eot_token]], 2, seed=0)  # compile before the first request
        return Batcher(sampler, encoder, scorer=scorer, **self._batcher_args)

    def _encoder(self, folder, encoder=None):
        """The one `Encoder` every model here reads with (one a run would cost tens of MB each); a ValueError when
        `folder`'s vocabulary is not the first model's. `encoder`: the first model's own, already loaded."""
        if self.vocab is None:
            encoder = encoder or Encoder(*read_vocab(folder))
            self.vocab = (folder, encoder)
            return encoder
        first = self.vocab[1]
        tokens, merges = read_vocab(folder)
        if tokens != first.encoder or {pair: rank for rank, pair in enumerate(merges)} != first.bpe_ranks:
            raise ValueError(f"{folder} has another vocabulary than {self.vocab[0]}; one server serves models of one "
                             "vocabulary (serve them apart)")
        return first


def _described(base):
    folder, checkpoint, precision = base
    return f"{folder} ({checkpoint or 'latest'}, {precision})"


def open_runs(catalog, run_names, checkpoint_dir):
    """Serve every run of `run_names` (folders under `checkpoint_dir`), in order; returns `catalog`.

    The adapter table is made once for all the LoRA runs among them (growing it run by run would leave
    the memory of each smaller table behind).
    """
    folders = [run_folder(checkpoint_dir, name) for name in run_names]
    found = [adapter_run(folder) for folder in folders]
    ranks = [settings["rank"] for settings, _ in filter(None, found)]
    catalog.sizes = (max(1, len(ranks)), max(ranks, default=1))
    for name, folder, adapters in zip(run_names, folders, found):
        catalog.add_run(name, folder, adapters)
    return catalog
