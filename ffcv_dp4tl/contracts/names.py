"""Names read from files and folders (class folders, split keys, file names), which could hold
anything: how they are shown, and what a split may be called. Shared by the builder, which
writes them, and every reader of ``manifest.json``, which gets them back from a file anyone can
edit (one rule each, here)."""
from __future__ import annotations

import re

#: C0 and C1 control characters and DEL: a terminal acts on them (an OSC sequence in a class
#: name retitled the window or wrote a link, even through a pipe to ``less -R``)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: the escapes ``rejects.txt`` and ``S.files.txt`` have always written for these three
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_LINE_BREAKS = re.compile("[\t\n\r]")


def name_text(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes, PEP 383) as ``\\xNN`` and
    nothing else changed: a file name as text that can be stored (``S.files.txt`` lines, which
    other tools open as paths). Any other lone surrogate (JSON's ``"\\ud800"`` in a manifest) is
    ``\\uXXXX``: it made the encoding raise, a traceback in place of the line (review)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        text = _OTHER_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: lone surrogates that are not PEP 383's escapes of undecodable bytes (``\udc80``-``\udcff``)
_OTHER_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def one_line(text: str) -> str:
    """``text`` with a tab, line feed or carriage return written ``\\t``, ``\\n``, ``\\r``: a
    field of a line-per-record file (``rejects.txt``, ``S.files.txt``), which stays one line."""
    return _LINE_BREAKS.sub(lambda m: _SHORT[m.group()], text)


def printable(text: str) -> str:
    """:func:`name_text` with every control character (C0, DEL, C1) as ``\\xNN`` too (tab, line
    feed, carriage return as ``\\t``, ``\\n``, ``\\r``): how a name read from a file or a
    folder, which could hold anything, is shown (messages, ``dp4tl info``/``verify``, the
    manifest's class names, ``rejects.txt``), so a terminal never acts on it. A valid U+0085
    and an undecodable byte 0x85 show alike there; ``S.files.txt`` keeps the name
    (:func:`name_text`)."""
    return _CONTROL.sub(lambda m: _SHORT.get(m.group(), f"\\x{ord(m.group()):02x}"),
                        name_text(text))


#: What a split may be called: its name becomes file names in the output folder
#: (``<split>.beton``, ``wds/<split>-000000.tar``), so a name from a split file that holds ``/``
#: or ``..`` would write outside the folder the user chose; checked by the build and again
#: whenever a manifest is read (a renamed split reached the terminal through error messages)
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def split_name_problem(split: object) -> str | None:
    """Why ``split`` cannot name a split (None when it can): see :data:`SPLIT_NAME`."""
    if isinstance(split, str) and SPLIT_NAME.fullmatch(split) and ".." not in split:
        return None
    return (f"split name {printable(str(split))!r} is not allowed (letters, digits, '_', '.', '-', "
            "starting with a letter or digit, no '..')")
