"""The model file: ``.safetensors`` with the metadata and tensors of docs/design.md §2.

:func:`save` writes atomically (temp file + rename); :func:`load` checks everything it
reads and turns every problem into one :class:`~exactformer.errors.ModelFileError` line.
Exact models also carry their rational weights in the metadata key ``rational``.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import numeric as nm
from .dataset import DIGITS, FLOAT, check_memory, json_object, write_atomic
from .errors import ModelFileError
from .model import ATTENTIONS, FORMAT, Block, FeedForward, SelfAttention, Transformer


def save(model, path) -> None:
    """Write ``.safetensors`` atomically (temp file + rename).

    Exact models also store their rational weights in the metadata key ``rational``
    (tensor name → list of ``"p/q"``), so that loading gives back the proven model.
    """
    from safetensors.numpy import save_file

    tensors, rational = {}, {}
    for name, t in model.named_tensors():
        t = np.asarray(t)
        tensors[name] = nm.to_float(t).copy(order="C")
        if nm.is_exact(t):
            rational[name] = [str(Fraction(v)) for v in t.ravel()]
    meta = {
        "format": FORMAT,
        "attention": model.attention,
        "temperature": repr(float(model.temperature)),
        "d": str(model.d),
        "n_blocks": str(model.n_blocks),
        "block_kinds": json.dumps([b.kind for b in model.blocks]),
        "info": json.dumps({k: v for k, v in model.info.items() if k != "mechanism"},
                           default=str),
    }
    if "mechanism" in model.info:  # its own key: large (per token), read by `explain`
        meta["mechanism"] = json.dumps(model.info["mechanism"], default=str)
    if rational:
        meta["rational"] = json.dumps(rational)
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


_BLOCK_BYTES = 2_000  # Python objects of one (empty) block, its kind and its run entry


def _check_classes(path, info: dict, d: int) -> None:
    """Classification metadata: ``codes`` (C, d) finite and distinct, ``classes`` C names."""
    codes, classes = info.get("codes"), info.get("classes")
    if codes is not None:
        ok = (isinstance(codes, list) and len(codes) > 0
              and all(isinstance(r, list) and len(r) == d
                      and all(type(v) in (int, float) for v in r) for r in codes))
        if not ok:
            raise ModelFileError(f"{path}: metadata 'codes' must be a non-empty (C, {d}) list "
                                 "of numbers")
        a = np.array(codes, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ModelFileError(f"{path}: metadata 'codes' holds NaN or inf")
        if len(np.unique(a, axis=0)) < len(a):
            raise ModelFileError(f"{path}: metadata 'codes' gives two classes one code")
    if classes is not None:
        kinds = {type(v) for v in classes} if isinstance(classes, list) else {None}
        if codes is None or not (kinds <= {int} or kinds <= {str}) or \
                len(classes) != len(codes) or len(set(classes)) != len(classes):
            raise ModelFileError(f"{path}: metadata 'classes' must name each of the "
                                 f"{len(codes or [])} codes once (integers or text)")


# the strict spellings of docs/design.md §2 (dataset.DIGITS, dataset.FLOAT, and this one)
_RATIONAL = re.compile(r"-?[0-9]+(?:/[0-9]+)?")


def plain_metadata(path, meta: dict, key: str, form: re.Pattern, default: str | None = None,
                   doc: str = "docs/design.md §2") -> str:
    """``meta[key]`` (or ``default``) when it is spelled in ``form`` exactly; else one line
    (``doc`` names the format's page). Also the TD-TF model reader's."""
    value = meta[key] if default is None else meta.get(key, default)
    if not form.fullmatch(value):
        what = "a decimal integer" if form is DIGITS else "a decimal number"
        raise ModelFileError(f"{path}: metadata '{key}' must be {what} in ASCII digits "
                             f"({doc}), got {value[:40]!r}")
    return value


def check_header(path) -> None:
    """A safetensors header that names a tensor or a metadata key twice is refused: the
    safetensors library keeps one of the two silently (the header is ambiguous). Other
    defects of the header are left to the library's own reader."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size > min(100_000_000, path.stat().st_size):  # the library's limit
                return
            json.loads(fh.read(size), object_pairs_hook=json_object)
    except (OSError, UnicodeDecodeError, RecursionError):
        return
    except ValueError as exc:
        if "duplicate key" in str(exc):
            raise ModelFileError(f"{path}: the safetensors header gives a {exc}") from None


def checked_tensor(path, tensors: dict, name: str, shape) -> np.ndarray:
    """``tensors[name]``, present, float64, of ``shape`` and finite; else one line.
    Also the TD-TF model reader's."""
    if name not in tensors:
        raise ModelFileError(f"{path}: missing tensor {name}")
    t = tensors[name]
    if t.dtype != np.float64:
        raise ModelFileError(f"{path}: tensor {name} has dtype {t.dtype}, expected float64")
    if tuple(t.shape) != tuple(shape):
        raise ModelFileError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                             f"expected {tuple(shape)}")
    if not np.all(np.isfinite(t)):
        raise ModelFileError(f"{path}: tensor {name} has non-finite values")
    return t


KIND_CHARS = 60
"""Block kinds are labels (``info``, ``explain``, figures): at most this many characters."""


def _label(kind) -> str:
    """A block kind as a printable label of at most KIND_CHARS characters (metadata is input:
    a 10⁵-character kind made ``explain`` print 200 kB and its figure's legend overflow)."""
    text = "".join(c if c.isprintable() else "?" for c in str(kind))
    return text if len(text) <= KIND_CHARS else text[:KIND_CHARS - 1] + "…"


def _json(text: str):
    """A metadata value as JSON, a key given twice refused (ambiguous)."""
    return json.loads(text, object_pairs_hook=json_object)


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """Metadata and tensors of a regular safetensors file whose header names nothing twice
    (exactformer's and the TD-TF model reader); every problem is a :class:`ModelFileError`."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():  # a FIFO would block the reader forever
        raise ModelFileError(f"{path}: not a regular file")
    check_header(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a readable .safetensors file ({exc})") from None
    return meta, tensors


def load(path) -> Transformer:
    """Read and check a model file; every problem is one :class:`ModelFileError` line."""
    path = Path(path)
    meta, tensors = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: unknown format {meta.get('format')!r} (expected {FORMAT!r})"
        )
    attention = meta.get("attention")
    if attention not in ATTENTIONS:
        raise ModelFileError(f"{path}: attention must be hardmax or softmax, got {attention!r}")
    try:
        d = int(plain_metadata(path, meta, "d", DIGITS))
        n_blocks = int(plain_metadata(path, meta, "n_blocks", DIGITS))
        temperature = float(plain_metadata(path, meta, "temperature", FLOAT, "1.0"))
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: bad or missing metadata ({exc})") from None
    if d < 1 or n_blocks < 0:
        raise ModelFileError(f"{path}: metadata d = {d}, n_blocks = {n_blocks} are not valid")
    if attention == "softmax" and "temperature" not in meta:
        raise ModelFileError(f"{path}: a softmax model needs its temperature (metadata "
                             "'temperature', docs/design.md §2)")
    if attention == "softmax" and not (np.isfinite(temperature) and temperature > 0):
        raise ModelFileError(f"{path}: softmax temperature must be positive, got {temperature}")
    if n_blocks > 1_000_000_000:
        raise ModelFileError(f"{path}: n_blocks = {n_blocks} is beyond any model this tool "
                             "can hold (docs/limits.md)")
    check_memory(path, n_blocks * _BLOCK_BYTES, f"n_blocks = {n_blocks}", ModelFileError)
    try:
        kinds = _json(meta.get("block_kinds", "[]"))
        info = _json(meta.get("info", "{}"))
        rational = _json(meta.get("rational", "{}"))
        mechanism = _json(meta["mechanism"]) if "mechanism" in meta else None
    except ValueError as exc:  # JSONDecodeError, or an integer literal beyond 4300 digits
        raise ModelFileError(f"{path}: corrupt metadata ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: corrupt metadata (JSON nested too deeply)") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: metadata 'info' must be a JSON object, "
                             f"got {type(info).__name__}")
    _check_classes(path, info, d)
    if mechanism is not None:
        _check_mechanism(path, mechanism, n_blocks)
        info["mechanism"] = mechanism
    _check_rational_cover(path, rational, tensors)
    if not isinstance(kinds, list) or len(kinds) != n_blocks:
        kinds = [""] * n_blocks
    known = set()

    def get(name, shape):
        known.add(name)
        t = checked_tensor(path, tensors, name, shape)
        if name in rational:
            bad = next((s for s in rational[name]
                        if not (isinstance(s, str) and _RATIONAL.fullmatch(s))), None)
            if bad is not None:
                raise ModelFileError(f"{path}: rational weights of {name}: {str(bad)[:40]!r} is "
                                     "not 'p/q' or 'p' in ASCII digits (docs/design.md §2)")
            try:
                vals = [Fraction(s) for s in rational[name]]
                exact = np.array(vals, dtype=object).reshape(t.shape)
                as_float = nm.to_float(exact)
            except (ValueError, ZeroDivisionError, TypeError):
                raise ModelFileError(f"{path}: corrupt rational weights for {name}") from None
            except OverflowError:
                raise ModelFileError(f"{path}: a rational weight of {name} is beyond float64"
                                     ) from None
            if not np.array_equal(as_float, t):
                raise ModelFileError(f"{path}: rational weights of {name} disagree with the tensor")
            return exact if exact.shape else exact[()]
        return t if t.shape else t[()]

    def shape_of(name):
        return tensors[name].shape if name in tensors else None

    layers = {k.rsplit(".", 1)[0] for k in tensors}  # "blocks.{l}.ff" / "blocks.{l}.sa"
    blocks = []
    for l in range(n_blocks):
        p = f"blocks.{l}."
        ff = sa = None
        if p + "ff" in layers:
            ushape = shape_of(p + "ff.U")
            w = ushape[0] if ushape is not None and len(ushape) == 2 else -1
            if w < 0:
                raise ModelFileError(f"{path}: tensor {p}ff.U missing or not 2-D")
            ff = FeedForward(get(p + "ff.U", (w, d)), get(p + "ff.b", (w,)),
                             get(p + "ff.W", (d, w)), get(p + "ff.eta", ()))
        if p + "sa" in layers:
            qshape = shape_of(p + "sa.Q")
            h = qshape[0] if qshape is not None and len(qshape) == 2 else -1
            if h < 0:
                raise ModelFileError(f"{path}: tensor {p}sa.Q missing or not 2-D")
            Q, K = get(p + "sa.Q", (h, d)), get(p + "sa.K", (h, d))
            rho = get(p + "sa.rho", ())
            if p + "sa.V" in tensors:
                sa = SelfAttention(Q, K, V=get(p + "sa.V", (d, d)), rho=rho)
            else:
                vo = shape_of(p + "sa.Vo")
                r = vo[1] if vo is not None and len(vo) == 2 else -1
                if r < 0:
                    raise ModelFileError(f"{path}: block {l} has neither sa.V nor sa.Vo/sa.Vi")
                sa = SelfAttention(Q, K, Vo=get(p + "sa.Vo", (d, r)), Vi=get(p + "sa.Vi", (r, d)),
                                   rho=rho)
        kind = _label(kinds[l])
        blocks.append(Block(ff, sa, kind))
    extra = sorted(set(tensors) - known)
    if extra:
        raise ModelFileError(f"{path}: unexpected tensor {extra[0]} (not part of {FORMAT})")
    return Transformer(blocks, d, attention, temperature, info if isinstance(info, dict) else {})


def _ints(v, lo: int, hi: int) -> bool:
    """``v`` is a list of integers in ``[lo, hi)`` (not bools)."""
    return isinstance(v, list) and all(type(i) is int and lo <= i < hi for i in v)


def _check_mechanism(path, mech, n_blocks: int) -> None:
    """The ``mechanism`` metadata (docs/design.md §2) is well-formed and self-consistent:
    ``explain`` indexes blocks, tokens and destinations with it (a collapse block of -5
    wrapped around; 10¹⁸ or a short list was an IndexError, exit 3)."""
    def bad(what: str):
        raise ModelFileError(f"{path}: metadata 'mechanism': {what}")

    if not isinstance(mech, dict):
        bad("must be a JSON object")
    if mech.get("version", 1) != 1:
        bad(f"version {str(mech['version'])[:20]} is not one this reader knows (1)")
    c = mech.get("collapse_block")
    if not (type(c) is int and 0 <= c < n_blocks):
        bad(f"collapse_block must be a block of the model (0 … {n_blocks - 1})")
    dests, target = mech.get("destinations"), mech.get("destination_target")
    if not (isinstance(dests, list) and all(
            isinstance(p, list) and all(type(v) in (int, float) for v in p) for p in dests)):
        bad("destinations must be a list of points (lists of numbers)")
    if not (_ints(target, 0, 2**63) and len(target) == len(dests)):
        bad("destination_target must give one target id per destination")
    leaders, token_dest = mech.get("leaders"), mech.get("token_destination")
    final = mech.get("final_block", [])  # absent: measured on the data by explain
    if not (isinstance(leaders, list) and isinstance(token_dest, list)
            and len(leaders) == len(token_dest)):
        bad("leaders and token_destination must be lists with one entry per sequence")
    if "final_block" in mech and not (isinstance(final, list) and len(final) == len(leaders)):
        bad("final_block must have one entry per sequence")
    for j, (lead, td) in enumerate(zip(leaders, token_dest)):
        if not _ints(td, 0, len(dests)):
            bad(f"token_destination of sequence {j} must be destination ids")
        if not _ints(lead, 0, len(td)):
            bad(f"leaders of sequence {j} must be token positions")
        if final and not (_ints(final[j], -1, n_blocks) and len(final[j]) == len(td)):
            bad(f"final_block of sequence {j} must give a block (-1 … {n_blocks - 1}) per token")


def _check_rational_cover(path, rational, tensors) -> None:
    """Fail closed: ``rational`` metadata, when present, gives every tensor and nothing else.

    A file whose rationals cover only some tensors would be half exact: it is malformed
    (docs/design.md §2), not an exact model with float holes.
    """
    if not isinstance(rational, dict):
        raise ModelFileError(f"{path}: metadata 'rational' must map tensor names to lists")
    if not rational:
        return
    missing = sorted(set(tensors) - set(rational))
    if missing:
        raise ModelFileError(f"{path}: 'rational' metadata covers some tensors but not "
                             f"{missing[0]} ({len(missing)} missing): a partial exact model")
    foreign = sorted(set(rational) - set(tensors))
    if foreign:
        raise ModelFileError(f"{path}: 'rational' metadata names {foreign[0]}, which is not a "
                             "tensor of the file")
    for name, values in rational.items():
        if not isinstance(values, list) or len(values) != int(np.asarray(tensors[name]).size):
            raise ModelFileError(f"{path}: rational weights of {name} do not match its shape")
