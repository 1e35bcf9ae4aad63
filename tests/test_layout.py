"""The package's layout: stages that import each other in one direction, short modules, a true code map,
and documentation links that resolve."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "gpt2_simple")
STAGES = ("model", "formats", "training", "generation", "serving")
# Which stages each stage may import: data flows model -> formats -> training / generation -> serving.
ALLOWED = {"model": set(), "formats": {"model"}, "training": {"model", "formats"},
           "generation": {"model", "formats"}, "serving": {"model", "formats", "generation"}}
MAX_FUNCTION_LINES = 60  # of code: docstrings, comments and blank lines do not count


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PACKAGE).replace(os.sep, "/"), path


def _stage(relpath):
    head = relpath.split("/")[0]
    return head if head in STAGES else None


def _imported_modules(relpath, path):
    """The gpt2_simple modules `relpath` imports, as paths relative to the package ('formats/hf')."""
    package = relpath.split("/")[:-1]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "gpt2_simple":
                parts = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                yield "/".join(parts + [alias.name])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gpt2_simple":
                    yield "/".join(alias.name.split(".")[1:])


def test_stages_import_each_other_in_one_direction():
    edges = set()
    for relpath, path in _modules():
        source = _stage(relpath)
        if source is None:
            continue
        for target in _imported_modules(relpath, path):
            target_stage = _stage(target)
            if target_stage and target_stage != source:
                edges.add((source, target_stage))
    forbidden = sorted((a, b) for a, b in edges if b not in ALLOWED[a])
    assert forbidden == [], f"stage imports against the data flow: {forbidden}"


def _module_graph():
    """{module: the package's modules it imports}, as paths relative to the package without '.py'."""
    modules = {relpath[:-3].removesuffix("/__init__"): path for relpath, path in _modules()}
    graph = {}
    for name, path in modules.items():
        relpath = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
        targets = set()
        for target in _imported_modules(relpath, path):
            while target and target not in modules:  # `from .x import name`: the module is x
                target = target.rpartition("/")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph):
    """One import cycle of `graph` as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    graph = _module_graph()
    assert graph["serving/serve"] >= {"serving/catalog", "serving/routes"}  # the graph sees relative imports
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle(graph) is None


def _code_lines(node, lines):
    """Lines of code in a function (`lines`: its module's): its docstring, comments and blank lines left out."""
    doc = node.body[0]
    skip = set()
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        skip = set(range(doc.lineno, doc.end_lineno + 1))
    return sum(1 for number in range(node.lineno, node.end_lineno + 1) if number not in skip
               and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#"))


def test_no_function_is_long():
    long = {}
    for relpath, path in _modules():
        source = open(path, encoding="utf-8").read()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (lines := _code_lines(node, source.splitlines())) > MAX_FUNCTION_LINES:
                    long[f"{relpath}:{node.name}"] = lines
    assert long == {}


def test_every_module_stays_short():
    lengths = {relpath: sum(1 for _ in open(path, encoding="utf-8")) for relpath, path in _modules()}
    assert {k: v for k, v in lengths.items() if v > 350} == {}
    assert len(lengths) > 25


def test_each_stage_says_what_it_owns():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse(open(os.path.join(PACKAGE, stage, "__init__.py")).read()))
        assert doc and len(doc.split()) > 30, stage
        modules = sorted(name for name in os.listdir(os.path.join(PACKAGE, stage))
                         if name.endswith(".py") and name != "__init__.py")
        assert [m for m in modules if f"`{m}`" not in doc] == [], f"{stage}/__init__.py does not name them"


def test_readme_code_map_matches_the_tree():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", section)) - {"__init__.py"}
    files = {relpath for relpath, _ in _modules() if not relpath.endswith("__init__.py")}
    assert named == files, (sorted(files - named), sorted(named - files))


def _anchors(path):
    """GitHub's anchors for the headings of a markdown file: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", open(path, encoding="utf-8").read(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_and_docs_links_resolve():
    pages = [os.path.join(ROOT, "README.md")] + [
        os.path.join(ROOT, "docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
        if name.endswith(".md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", open(page, encoding="utf-8").read()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            if not os.path.exists(path) or (anchor and anchor not in _anchors(path)):
                broken.append((os.path.relpath(page, ROOT), target))
    assert broken == []
    readme = open(pages[0], encoding="utf-8").read()
    unlinked = [os.path.relpath(p, ROOT) for p in pages[1:] if os.path.relpath(p, ROOT) not in readme]
    assert unlinked == [], "docs pages the README does not link"
