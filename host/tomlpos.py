"""Line numbers for TOML keys, so that a configuration error can name the key *and* its line.

tomllib parses but does not keep positions; this scanner reads the same text line by line and
records where each table and key was written. It understands what configuration files use:
[table], [[array of tables]], key = value, dotted and quoted keys, and multi-line strings and
arrays (it skips their continuation lines). Paths look like `connections.gw.local.id` and, for
arrays of tables, `board[1].port`.
"""
import re

_BARE = r"[A-Za-z0-9_-]+"
_KEY = r'(?:%s|"(?:[^"\\]|\\.)*"|\'[^\']*\')' % _BARE
_DOTTED = r"%s(?:\s*\.\s*%s)*" % (_KEY, _KEY)
_TABLE = re.compile(r"^\s*\[\s*(%s)\s*\]\s*(#.*)?$" % _DOTTED)
_ARRAY = re.compile(r"^\s*\[\[\s*(%s)\s*\]\]\s*(#.*)?$" % _DOTTED)
_ASSIGN = re.compile(r"^\s*(%s)\s*=" % _DOTTED)
_PART = re.compile(_KEY)


def _parts(dotted):
    out = []
    for p in _PART.findall(dotted):
        if p[:1] in "\"'":
            p = p[1:-1]
        out.append(p)
    return out


def key_lines(text):
    """Map every dotted key path (and table path) to its 1-based line number."""
    lines = {}
    counts = {}
    prefix = []
    depth = 0          # open brackets of a multi-line array
    in_string = None   # the delimiter of an open multi-line string
    for no, line in enumerate(text.splitlines(), 1):
        if in_string:
            if in_string in line:
                in_string = None
            continue
        if depth:
            depth += line.count("[") - line.count("]")
            depth = max(depth, 0)
            continue
        m = _ARRAY.match(line)
        if m:
            parent = _resolve(_parts(m.group(1))[:-1], counts)[0]
            name = _parts(m.group(1))[-1]
            base = re.sub(r"\[\d+\]", "", parent + "." + name if parent else name)
            i = counts.get(base, 0)
            counts[base] = i + 1
            path = (parent + "." + name if parent else name) + "[%d]" % i
            prefix = [path]
            lines.setdefault(re.sub(r"\[\d+\]$", "", path), no)
            lines[path] = no
            continue
        m = _TABLE.match(line)
        if m:
            prefix = _resolve(_parts(m.group(1)), counts)
            lines[".".join(prefix)] = no
            continue
        m = _ASSIGN.match(line)
        if m:
            path = ".".join(prefix + _parts(m.group(1)))
            lines.setdefault(path, no)
            rest = line[m.end():]
            for q in ('"""', "'''"):
                if rest.count(q) % 2 == 1:
                    in_string = q
            value = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", rest).split("#")[0]
            depth = max(value.count("[") - value.count("]"), 0)
    return lines


def _resolve(parts, counts):
    """The path of [a.b.c]; a part naming an array of tables means its latest element."""
    path = ""
    for p in parts:
        path = path + "." + p if path else p
        base = re.sub(r"\[\d+\]", "", path)
        if base in counts:
            path += "[%d]" % (counts[base] - 1)
    return [path]


def line_of(lines, key):
    """The line of `key`, else of its nearest written parent, else None."""
    parts = key.split(".")
    while parts:
        k = ".".join(parts)
        for candidate in (k, re.sub(r"\[\d+\]$", "", k)):    # board[0] written as `board = [...]`
            if candidate in lines:
                return lines[candidate]
        parts.pop()
    return None
