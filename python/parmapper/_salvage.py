"""Results a worker sent that the caller cannot rebuild, item by item.

A worker pickles the results of a task together.  Unpickling them in the
caller can fail although pickling succeeded in the worker: a class that
exists only in the worker (defined after the fork, or by `fun`), an
exception class whose ``__init__`` does not take its ``args`` back, a
``__setstate__`` or ``__reduce__`` callable that raises in the caller...
Such a failure belongs to the item whose result it is, never to the map.

The fast path (``pickle.loads``) is unchanged; only when it fails, the
record is loaded again with :class:`_Rescuer`, pickle's Python unpickler
with the steps that build objects guarded: an object that cannot be built
is replaced by an :class:`_Unbuilt` marker that records what failed and
why, and that swallows whatever the rest of the pickle does to it.  Every
item whose result reaches a marker then becomes an error for that item
alone (:func:`rescue`).
"""
import gc
import io
import pickle
import types

from . import _core

__all__ = ["rescue", "rescue_items", "item_error", "load", "reaches_marker", "unbuilt_items", "describe",
           "result_error", "exception_error"]


class _Unbuilt:
    """Stands for an object the caller could not rebuild."""

    __slots__ = ("what", "error")

    def __init__(self, what, error):
        self.what = what      # the class or callable, as "module.name"
        self.error = error    # the exception the unpickler raised

    # Whatever the rest of the pickle does to the object is ignored.
    def __call__(self, *args, **kwargs):
        return self

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def add(self, value):
        pass

    def update(self, values):
        pass

    def __repr__(self):
        return "<not rebuilt: {}>".format(self.what)


def _name(obj):
    if isinstance(obj, _Unbuilt):
        return obj.what
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qual is None:
        return type(obj).__qualname__
    return "{}.{}".format(mod, qual) if mod else qual


def _marker(operands, what, error):
    """The marker already among `operands`, else a new one."""
    for o in operands:
        if isinstance(o, _Unbuilt):
            return o
    return _Unbuilt(what, error)


_base = pickle._Unpickler
_dispatch = dict(_base.dispatch)


def _guarded(load, k, what_of):
    """The loader `load` of an opcode that takes `k` operands off the stack
    and pushes one object: on failure the operands are replaced by a marker
    (the one among them, if any, so the first cause is kept)."""
    def guarded(self):
        stack = self.stack
        n = len(stack)
        operands = stack[n - k:]
        try:
            load(self)
        except pickle.UnpicklingError:
            raise  # a malformed record, not an object that fails to build
        except Exception as e:
            del stack[n - k:]
            stack.append(_marker(operands, what_of(operands), e))
    return guarded


_dispatch[pickle.REDUCE[0]] = _guarded(
    _base.load_reduce, 2, lambda ops: _name(ops[0]))
_dispatch[pickle.NEWOBJ[0]] = _guarded(
    _base.load_newobj, 2, lambda ops: _name(ops[0]))
_dispatch[pickle.NEWOBJ_EX[0]] = _guarded(
    _base.load_newobj_ex, 3, lambda ops: _name(ops[0]))
_dispatch[pickle.BUILD[0]] = _guarded(
    _base.load_build, 2, lambda ops: _name(type(ops[0])))


class _Rescuer(_base):
    """pickle's Python unpickler, building a marker for what fails."""

    dispatch = _dispatch

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except Exception as e:
            return _Unbuilt("{}.{}".format(module, name), e)


_OPAQUE = (type, types.ModuleType, types.FunctionType,
           types.BuiltinFunctionType, types.MethodType, types.CodeType,
           types.FrameType)


def reaches_marker(obj):
    """The first marker `obj` reaches (through any container the garbage
    collector can see into), or None."""
    seen = set()
    todo = [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, _Unbuilt):
            return o
        if id(o) in seen or isinstance(o, _OPAQUE):
            continue
        seen.add(id(o))
        if isinstance(o, (str, bytes, int, float, bool, type(None))):
            continue
        todo.extend(gc.get_referents(o))
    return None


def describe(marker):
    """What failed, for a message: "module.Name: Type: message"."""
    e = marker.error
    return "{}: {}: {}".format(marker.what, type(e).__name__, e)


def unbuilt_items(values):
    """{position: marker} for each value of `values` that reaches one."""
    out = {}
    for j, v in enumerate(values):
        m = reaches_marker(v)
        if m is not None:
            out[j] = m
    return out


def load(data, buffers=None):
    """Loads a pickle, markers standing for what cannot be built."""
    return _Rescuer(io.BytesIO(data), buffers=buffers).load()


def result_error(index, value, marker):
    from ._errors import ResultPicklingError
    e = ResultPicklingError(
        "item {}: the result (type {}) cannot be rebuilt in the caller: "
        "{}".format(index, marker.what.rpartition(".")[2] if value is marker
                    else type(value).__qualname__, describe(marker)))
    e.type_name = marker.what
    return e


def exception_error(tname, msg, marker):
    from ._errors import RemoteError
    return RemoteError(
        "{}: {} (the exception could not be rebuilt in the caller: {})".format(
            tname, msg, describe(marker)), tname, msg)


def rescue(data, buffers, first):
    """A worker's result record (REC_PLAIN: the list of results, REC_ERRORS:
    (results, {position: error entry})) that ``pickle.loads`` failed on,
    loaded again item by item.

    Returns ``(results, errors)`` in the REC_ERRORS shape, where each item
    whose result cannot be rebuilt has an error entry with a
    :class:`ResultPicklingError`, and each error entry whose exception
    cannot be rebuilt carries a :class:`RemoteError` instead.  Raises when
    the record cannot be read at all (it is then corrupt, not unbuildable).
    """
    obj = load(data, buffers)
    if isinstance(obj, list):
        results, errors = obj, {}
    elif (isinstance(obj, tuple) and len(obj) == 2
          and isinstance(obj[0], list) and isinstance(obj[1], dict)):
        results, errors = obj[0], dict(obj[1])
    else:
        raise pickle.UnpicklingError("parmapper: bad result record")
    for j, entry in list(errors.items()):
        marker = reaches_marker(entry)
        if marker is None:
            continue
        # (exception or None, type name, message, traceback text, kind):
        # the strings and the kind always load.
        exc, tname, msg, tb, kind = entry
        errors[j] = (exception_error(tname, msg, marker), tname, msg, tb,
                     kind)
    for j, marker in unbuilt_items(results).items():
        if j in errors:
            continue
        errors[j] = (result_error(first + j, results[j], marker),
                     "ResultPicklingError", "", "", _core.ERR_CALL)
        results[j] = None
    return results, errors


def rescue_items(data, buffers, first):
    """In a worker: a task's pickled items that ``pickle.loads`` failed on
    (a class the caller made after the worker was forked...), loaded again
    item by item.  Each item that cannot be rebuilt is replaced by an
    ``_Unsent`` marker carrying an :class:`ItemPicklingError` naming it,
    which the worker raises in the item's place (so it follows
    `exception`); the other items run as usual."""
    from ._errors import _Unsent
    items = load(data, buffers)
    if not isinstance(items, list):
        raise pickle.UnpicklingError("parmapper: bad task record")
    for j, marker in unbuilt_items(items).items():
        items[j] = _Unsent(_item_error(first + j, items[j], marker))
    return items


def _item_error(index, value, marker):
    from ._errors import ItemPicklingError
    return ItemPicklingError(
        "item {}: the item (type {}) cannot be rebuilt in the worker: "
        "{}".format(index, marker.what.rpartition(".")[2]
                    if value is marker else type(value).__qualname__,
                    describe(marker)))


def item_error(data, index):
    """In a worker: the :class:`ItemPicklingError` for item `index`, which
    came pickled alone (`data`, the pickle of ``[item]``, in a task made by
    the input's thread) and that ``pickle.loads`` failed on."""
    from ._errors import ItemPicklingError
    try:
        value = load(data)
        if isinstance(value, list) and len(value) == 1:  # [item]
            value = value[0]
    except Exception as e:
        return ItemPicklingError(
            "item {}: the item cannot be rebuilt in the worker: {}: {}".format(
                index, type(e).__name__, e))
    marker = reaches_marker(value)
    if marker is None:  # loaded the second time: say what the first said
        try:
            pickle.loads(data)
        except Exception as e:
            return ItemPicklingError(
                "item {}: the item cannot be rebuilt in the worker: "
                "{}: {}".format(index, type(e).__name__, e))
        return ItemPicklingError(
            "item {}: the item could not be rebuilt in the worker".format(index))
    return _item_error(index, value, marker)
