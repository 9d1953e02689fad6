"""A project that explains itself: docstrings, help(), stubs, docs files,
the README's new examples, and errors/warnings through the usual channels."""
import ast
import inspect
import os
import pickle
import pydoc
import re
import warnings

import pytest

import parmapper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(parmapper.__file__)

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:.*[Pp]ort.*:UserWarning"),
    pytest.mark.filterwarnings(r"ignore::ResourceWarning"),
]


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


PUBLIC = [n for n in parmapper.__all__ if n not in ("__version__", "CPU_COUNT")]
DOCUMENTED = [parmapper.parmap, parmapper.Pool, parmapper.ReturnProcess,
              parmapper.ParEval]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring(name):
    obj = getattr(parmapper, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 20, name
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        for meth, fn in vars(obj).items():
            if not meth.startswith("_") and callable(fn):
                assert inspect.getdoc(fn), "{}.{}".format(name, meth)


@pytest.mark.parametrize("obj", DOCUMENTED, ids=lambda o: o.__name__)
def test_numpydoc_every_option_has_a_line(obj):
    doc = inspect.getdoc(obj)
    assert "Parameters\n----------" in doc
    assert "Examples\n--------" in doc
    target = obj.__init__ if inspect.isclass(obj) else obj
    for p in inspect.signature(target).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            assert "**" + p.name in doc, (obj.__name__, p.name)
        elif p.name != "group":  # multiprocessing's, always None
            assert re.search(r"^{}( : |, )".format(p.name) + r"|^[\w, ]*\b" + p.name +
                             r"\b[\w, ]* :", doc, re.M), (obj.__name__, p.name)


def test_help_parmap_shows_the_star_kwstar_table():
    text = pydoc.render_doc(parmapper.parmap, renderer=pydoc.plaintext)
    assert re.search(r"star\s+kwstar\s+item\s+positional\s+keywords", text)
    for row in (r"False\s+False\s+``val``", r"True\s+True\s+``vals,kwvals``",
                r"None\s+True\s+``kwvals``"):
        assert re.search(row, text), row


def test_type_stubs_are_installed_and_complete():
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    stub = os.path.join(PKG, "__init__.pyi")
    with open(stub, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            defined.add(node.target.id)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert set(parmapper.__all__) <= defined
    # the stub's parmap takes exactly parmap's parameters
    proto = next(n for n in tree.body
                 if isinstance(n, ast.ClassDef) and n.name == "_Parmap")
    call = next(n for n in proto.body
                if isinstance(n, ast.FunctionDef) and n.name == "__call__")
    stub_params = [a.arg for a in call.args.args][1:]
    assert stub_params == list(inspect.signature(parmapper.parmap).parameters)


def test_docs_exist_and_link_up():
    api = read("docs", "api.md")
    for p in inspect.signature(parmapper.parmap).parameters:
        assert "`{}`".format(p) in api, p
    for name in PUBLIC:
        assert name in api, name
    how = read("docs", "how-it-works.md")
    assert "(data-path.png)" in how and "benchmarks.md" in how
    with open(os.path.join(ROOT, "docs", "data-path.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(ROOT, "docs", "diagrams", "data_path.py"))
    mig = read("docs", "migrating.md")
    for head in ("multiprocessing", "concurrent.futures", "joblib",
                 "the original parmapper"):
        assert re.search(r"^## From " + re.escape(head), mig, re.M), head
    readme = read("README.md")
    assert "## From one machine to a cluster" in readme
    assert "docs/benchmarks.md" in readme


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md", "docs/migrating.md"])
def test_python_blocks_in_docs_are_valid_python(doc):
    blocks = re.findall(r"```python\n(.*?)```", read(*doc.split("/")), re.S)
    assert blocks
    for b in blocks:
        ast.parse(b)


def _readme_block(heading):
    readme = read("README.md")
    section = readme.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_pool_example_runs():
    ns = {}
    exec(_readme_block("## A drop-in for multiprocessing.Pool"), ns)
    assert ns["results"] == [x * x for x in range(100)]
    assert ns["pairs"] == [8, 9]


def test_readme_cluster_example_runs(capfd):
    pytest.importorskip("distributed")
    code = _readme_block("## From one machine to a cluster")
    code = code.replace("LocalCluster(n_workers=2)",
                        "LocalCluster(n_workers=2, threads_per_worker=1, "
                        "dashboard_address=':0')")
    ns = {"__name__": "__main__"}  # the example is guarded, as a script
    try:
        exec(code, ns)
        assert ns["results"] == [x * x for x in range(1000)]
        assert "1000/1000" in capfd.readouterr().err
    finally:
        client = ns.get("client")
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()


def test_errors_subclass_the_obvious_builtins():
    assert issubclass(parmapper.ParmapperError, RuntimeError)
    assert issubclass(parmapper.WorkerDiedError, parmapper.ParmapperError)
    assert issubclass(parmapper.ItemShapeError, TypeError)
    assert issubclass(parmapper.ItemPicklingError, pickle.PicklingError)
    assert issubclass(parmapper.ResultPicklingError, pickle.PicklingError)
    with pytest.raises(TypeError):
        parmapper.parmap(abs, [1], N="two")
    with pytest.raises(ValueError):
        parmapper.parmap(abs, [1], N=0)
    with pytest.raises(ValueError):
        parmapper.parmap(abs, [1], exception="ignore")
    with pytest.raises(TypeError):
        parmapper.parmap(abs, [1], progress=1.5)


def test_soft_problems_are_warnings():
    with pytest.warns(UserWarning, match="chunksize=-1"):
        parmapper.parmap(abs, (x for x in [1]), chunksize=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(parmapper.parmap(abs, [-1, -2], chunksize=-1, N=2)) == [1, 2]
