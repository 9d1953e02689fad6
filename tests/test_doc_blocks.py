"""Every Python block of README.md and docs/*.md runs as written (issue 15,
item 8): pasted into a fresh namespace in which only the placeholders the
text leaves to the reader (``items``, ``work``, ``slow``...) stand for small
real data (tests/doc_prelude.py).  A signature block must be the real
signature.  The README's cluster example runs as a script, as a user would
paste it into a file.  Docstrings render as reStructuredText (docutils)."""
import ast
import glob
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

import parmapper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


def blocks():
    out = []
    for doc in DOCS:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as fh:
            text = fh.read()
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S)):
            line = text[:m.start()].count("\n") + 2
            out.append(pytest.param(doc, m.group(1), id="{}:{}".format(doc, line)))
    return out


def signature_of(code):
    """The public name a block gives the signature of, or None."""
    tree = ast.parse(code)
    if (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
            and isinstance(tree.body[0].value, ast.Call)
            and isinstance(tree.body[0].value.func, ast.Name)
            and tree.body[0].value.func.id in parmapper.__all__
            and "\n" not in code.strip().split("(", 1)[0]
            and len(code.strip().splitlines()) <= 6
            and not any(isinstance(a, ast.Constant)
                        for a in tree.body[0].value.args)):
        return tree.body[0].value.func.id
    return None


def needs_cluster(code):
    return "scheduler:8786" in code or re.search(r"\bclient\b", code)


def optional_imports(code):
    """Skips a block that imports a library outside the test extra (joblib:
    the migration guide shows its code side by side)."""
    for mod in ("joblib",):
        if re.search(r"^\s*(from|import) {}\b".format(mod), code, re.M):
            pytest.importorskip(mod)


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, processes=False,
                                       dashboard_address=":0")
    yield cluster
    cluster.close()


@pytest.mark.parametrize("doc,code", blocks())
def test_doc_block_runs(doc, code, request, capfd):
    name = signature_of(code)
    if name is not None:
        # A signature: the real one, parameter for parameter.
        call = ast.parse(code).body[0].value
        written = [ast.unparse(x) for x in call.args] + [
            ("**" + k.value.id) if k.arg is None else
            "{}={}".format(k.arg, ast.unparse(k.value)) for k in call.keywords]
        real = [str(p).replace(" = ", "=") for p in
                inspect.signature(getattr(parmapper, name)).parameters.values()]
        assert written == real, (name, written, real)
        return
    if "if __name__ == \"__main__\":" in code:
        pytest.skip("a script: run as one by test_readme_cluster_script")
    optional_imports(code)
    ns = {"__name__": "doc_block"}
    exec("from doc_prelude import *", ns)
    if needs_cluster(code):
        cluster = request.getfixturevalue("dask_cluster")
        code = code.replace('Client("scheduler:8786")', "Client(_cluster)")
        ns["_cluster"] = cluster
        if not re.search(r"^client = ", code, re.M):
            # The client the text made in the block before.
            from distributed import Client
            ns["client"] = Client(cluster)
    try:
        exec(compile(code, doc, "exec"), ns)
    finally:
        client = ns.get("client")
        if client is not None and hasattr(client, "close"):
            client.close()
    err = capfd.readouterr().err
    if "progress=" in code:
        # A progress example shows its bar (parmap is lazy: the block must
        # consume the results for anything to be drawn).
        assert re.search(r"\d+/\d+", err), err


def test_api_progress_examples_draw_bars(capfd):
    """The progress examples of docs/api.md each show progress."""
    ns = {"__name__": "doc_block"}
    exec("from doc_prelude import *", ns)
    api = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(import logging\nimport tqdm.*?)```",
                     api, re.S).group(1)
    import logging
    seen = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    logging.getLogger("doc_block").addHandler(handler)
    logging.getLogger("doc_block").setLevel(logging.INFO)
    try:
        exec(code, ns)
    finally:
        logging.getLogger("doc_block").removeHandler(handler)
    err = capfd.readouterr().err
    assert err.count("10/10") >= 3, err          # three bars, to the end
    assert "resizing" in err
    assert seen[-1] == "10 done", seen


@pytest.mark.timeout(180)
def test_readme_cluster_script(tmp_path):
    """The README's dask example, pasted into a file and run as a script."""
    pytest.importorskip("distributed")
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## From one machine to a cluster", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code += textwrap.dedent("""
        if __name__ == "__main__":
            assert results == [x * x for x in range(1000)]
            client.close()
            print("RESULTS OK")
    """)
    script = tmp_path / "cluster_example.py"
    script.write_text(code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(parmapper.__file__)))]
        + sys.path)
    r = subprocess.run([sys.executable, str(script)], capture_output=True,
                       text=True, env=env, timeout=170, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULTS OK" in r.stdout


@pytest.mark.parametrize("obj", [parmapper.parmap, parmapper.Pool,
                                 parmapper.ReturnProcess, parmapper.ParEval],
                         ids=lambda o: o.__name__)
def test_docstring_is_valid_restructuredtext(obj):
    """help() shows tables aligned only when they are well-formed RST."""
    docutils_core = pytest.importorskip("docutils.core")
    from docutils import nodes
    from docutils.parsers.rst import roles
    for role in ("class", "func", "meth", "attr", "mod", "exc"):  # Sphinx's
        roles.register_generic_role(role, nodes.literal)
    doc = inspect.getdoc(obj)
    lines = doc.splitlines()

    def numpydoc_star(m):
        """numpydoc's ``**kwargs`` parameter line, not an RST problem."""
        line = m.get("line") or 0
        return ("Inline strong start-string" in m.astext() and 0 < line <= len(lines)
                and any(ln.lstrip().startswith("**")
                        for ln in lines[max(0, line - 4):line]))

    tree = docutils_core.publish_doctree(
        doc, settings_overrides={"report_level": 5, "halt_level": 5,
                                 "warning_stream": False})
    problems = [m.astext() for m in tree.findall(nodes.system_message)
                if m["level"] >= 2 and not numpydoc_star(m)]
    assert problems == [], problems
    if obj is parmapper.parmap:
        assert list(tree.findall(nodes.table)), "the star/kwstar table"
