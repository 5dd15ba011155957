"""Method variants of the cost table: one method at another K or in reverse order (Fig. A2, A3).

A *variant* is a registered method plus settings that change its selection: ``fm[k=16]`` (FM
clustered into K = 16, Fig. A2), ``lm[reversed]`` (LM keeping its lowest-scored classes, Fig.
A3), ``fm[k=32,reversed]``. It composes with the cost table's ratio syntax
(``fm[k=16]@0.4/0.8``), and ``--ks 16,32`` / ``--orders ordered,reversed`` expand plain method
names into variants. Each variant is its own row and curve of the tables and plots, named by
its spelling (``fm[k=16]``) in ``results.json`` and by its label (``FM (K=16)``, ``LM
(reversed)``) in reports; the plain name (``lm``) is the method as published, as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from ..contracts import Order, check_items, check_k, check_pruned_ratios, split_items
from ..errors import DP4TLError
from ..scoring.registry import PlotStyle, get_scorer, is_registered

_SPELLING = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?$")
#: line styles of the variants of one method (same colour, told apart by line and marker)
_DASHES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass(frozen=True)
class Variant:
    method: str
    k: int | None = None  # None: the table's --k
    order: str = "ordered"

    @property
    def name(self) -> str:
        """The canonical spelling: ``lm``, ``fm[k=16]``, ``lm[reversed]``, ``fm[k=16,reversed]``."""
        mods = ([f"k={self.k}"] if self.k is not None else []) + \
            ([self.order] if self.order != "ordered" else [])
        return self.method + (f"[{','.join(mods)}]" if mods else "")

    @property
    def is_plain(self) -> bool:
        return self.k is None and self.order == "ordered"

    def label(self, base_label: str) -> str:
        mods = ([f"K={self.k}"] if self.k is not None else []) + \
            ([self.order] if self.order != "ordered" else [])
        return base_label + (f" ({', '.join(mods)})" if mods else "")

    def apply(self, cfg: Any) -> Any:
        """The PipelineConfig running this variant (method, K, order)."""
        return replace(cfg, method=self.method, order=self.order,
                       **({"k": self.k} if self.k is not None else {}))


def split_methods(text: str) -> list[str]:
    """``lm,fm[k=16,reversed]@0.4`` → ``["lm", "fm[k=16,reversed]@0.4"]``: commas inside
    brackets belong to the variant."""
    out, cur, depth = [], "", 0
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return split_items(text, "--methods", parts=out)


def parse_variant(text: str) -> Variant:
    """``fm[k=16,reversed]`` → Variant; a one-line error for a bad spelling or modifier. The
    method itself is checked against the registry by the caller (it lists the choices)."""
    m = _SPELLING.match(text.strip())
    if not m:
        raise DP4TLError(f"--methods: {text!r} must look like METHOD or METHOD[k=K,reversed] "
                         "(ratios after @, e.g. fm[k=16]@0.4/0.8)")
    method, mods = m.group(1), m.group(2)
    k, order = None, "ordered"
    for mod in (p.strip() for p in (mods or "").split(",") if p.strip()):
        if mod in Order.values():
            order = mod
        elif mod.startswith("k="):
            try:
                k = int(mod[2:])
            except ValueError:
                k = 0
            if k <= 0:
                raise DP4TLError(f"--methods: {text!r}: k must be a positive number of "
                                 f"clusters, got {mod[2:]!r}")
        else:
            raise DP4TLError(f"--methods: {text!r}: unknown modifier {mod!r} (use k=K, "
                             f"{' or '.join(Order.values())})")
    return Variant(method, k, order)


def expand(methods: Sequence[str], ks: Iterable[int] = (), orders: Iterable[str] = ()
           ) -> list[str]:
    """Variant names for a method list: ``ks`` gives every method that clusters into K (FM)
    one variant per K, ``orders`` every method one variant per order. A method already spelled
    with a K or an order keeps it. Order kept; a variant both spelled and expanded appears once,
    but a repeated --orders item is refused, as every list option's (``check_items``)."""
    ks, orders = [int(k) for k in ks], list(orders)
    if orders:
        check_items("--orders", orders)
    for o in orders:
        Order.check(o, "--orders")
    for k in ks:
        check_k(k, "--ks")
    out: list[str] = []
    for text in methods:
        v = parse_variant(text)
        uses_k = _clusters(v.method)
        k_list = [v.k] if v.k is not None or not ks or not uses_k else ks
        o_list = [v.order] if v.order != "ordered" or not orders else orders
        for k in k_list:
            for o in o_list:
                name = Variant(v.method, k, o).name
                if name not in out:
                    out.append(name)
    return out


def _clusters(method: str) -> bool:
    """The registered method reads K (k-means clusters: FM)."""
    return is_registered(method) and bool(getattr(get_scorer(method), "uses_k", False))


def expand_specs(names: Sequence[str], ratios_of: dict[str, list[float]], ks: Iterable[int] = (),
                 orders: Iterable[str] = ()) -> tuple[list[str], dict[str, list[float]]]:
    """``--methods`` entries (``fm[k=16]@0.4/0.8``; ``ratios_of`` maps each entry's part before
    ``@`` to its ratios) → the variant names and their own ratios, after ``--ks`` / ``--orders``
    (every variant of ``fm@0.4`` runs at 0.4 only)."""
    ks, orders = list(ks), list(orders)
    heads = [n.partition("@")[0] for n in names]
    if ks and not any(_clusters(parse_variant(h).method) for h in heads):
        raise DP4TLError(f"--ks {','.join(map(str, ks))}: none of the methods "
                         f"({', '.join(heads)}) clusters; --ks makes variants of methods "
                         "that do (fm)")
    methods: list[str] = []
    own: dict[str, list[float]] = {}
    for n in names:
        head = n.partition("@")[0]
        for v in expand([head], ks, orders):
            if v not in methods:
                methods.append(v)
            if head in ratios_of:
                own[v] = list(ratios_of[head])
    return methods, own


def base_method(name: str) -> str:
    """The registered method of a variant name (``fm[k=16]`` → ``fm``)."""
    return parse_variant(name).method


def variant_style(name: str, siblings: Sequence[str]) -> tuple[PlotStyle, str]:
    """Plot style and line style of a variant: its method's colour, a label with its settings,
    and a marker/dash that tells it from the other variants of the same method in ``siblings``."""
    v = parse_variant(name)
    base = (get_scorer(v.method).plot_style if is_registered(v.method)
            else PlotStyle(None, "o", v.method.upper()))
    if v.is_plain:
        return base, "-"
    same = [s for s in siblings if parse_variant(s).method == v.method]
    i = same.index(name) if name in same else 0
    marker = base.marker if v.k is None else _MARKERS[i % len(_MARKERS)]
    dash = "--" if v.order == "reversed" else _DASHES[i % len(_DASHES)]
    # reversed: an open marker too, as a dash alone is lost where its curve overlaps the plain
    fill = "none" if v.order == "reversed" else "full"
    return PlotStyle(base.color, marker, v.label(base.label), fill), dash


def parse_method_ratios(names: Sequence[str]) -> dict[str, list[float]]:
    """``grand@0.6/0.8`` → ``{"grand": [0.6, 0.8]}`` (a bad ratio is a one-line error). A
    method named twice, with ``@`` or without, is refused as ``lm,lm`` is: ``lm@0.6,lm@0.3``
    and ``lm,lm@0.3`` kept the last entry's ratios and dropped the other runs in silence
    (audit); its ratios go in one entry."""
    out = {}
    first: dict[str, str] = {}
    for n in names:
        head = n.partition("@")[0]
        if head in first:
            raise DP4TLError(f"--methods lists {head!r} twice ({first[head]}, {n}); list each "
                             f"once, its ratios in one entry (e.g. {head}@0.3/0.6, or {head} "
                             "alone for every --ratios)")
        first[head] = n
        if "@" in n:
            m, _, rs = n.partition("@")
            try:
                out[m] = [float(r) for r in rs.split("/") if r]
                if not out[m]:  # "random@" ran nothing for that method, in silence
                    raise ValueError(rs)
            except ValueError:
                raise DP4TLError(f"--methods: {n!r} must look like METHOD@R1/R2 with ratios in "
                                 "(0, 1), e.g. grand@0.6/0.8 (settings go in brackets: "
                                 "fm[k=16]@0.4, lm[reversed])") from None
            check_pruned_ratios(out[m], f"--methods {n!r}: ratio",
                                "0 % is the shared reference")
    return out


def plan_methods(methods: str, ks: Iterable[int] = (), orders: Iterable[str] = ()
                 ) -> tuple[list[str], dict[str, list[float]]]:
    """A ``--methods`` text (``lm,fm[k=16],grand@0.6``) with ``--ks`` / ``--orders`` → the cost
    table's method/variant names and the ratios of those limited to some (``method_ratios``)."""
    names = check_items("--methods", split_methods(methods))
    ks = list(ks)
    if ks:  # (8,8 made one variant in silence, where every other list refuses a repeat; audit)
        check_items("--ks", ks)
    return expand_specs(names, parse_method_ratios(names), ks, list(orders))
