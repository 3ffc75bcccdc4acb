"""The official Step-Video-T2V-Eval prompt format: a UTF-8 text file, one prompt per line.

The official benchmark (``benchmark/Step-Video-T2V-Eval`` in stepfun-ai/Step-Video-T2V: 128 Chinese
prompts, no file extension) groups its prompts into 11 categories, but the file itself does not say
which line belongs to which. A small categories config does: a JSON or YAML mapping from each of the
11 category names to a 1-based, inclusive line range::

    {"Sports": [1, 12], "Food": [13, 24], ..., "Style": [118, 128]}

Every category must be present, ranges must not overlap, must lie inside the file and must cover
every prompt line; blank lines are errors inside a range and fine only at the end of the file.
"Combination Concepts" (the upstream README's spelling) is accepted for "Combined Concepts".

These prompts carry no checks: videos made from them are a gallery (shown per category in the
report, scored only by user metrics), not judged by ``stepvideo.evaluation.checks``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from stepvideo.errors import InputError

OFFICIAL_CATEGORIES: tuple[str, ...] = ("Sports", "Food", "Scenery", "Animals", "Festivals", "Combined Concepts",
                                        "Surreal", "People", "3D Animation", "Cinematography", "Style")
ALIASES = {"Combination Concepts": "Combined Concepts"}

# CJK ideographs (with extension A and compatibility ideographs), CJK punctuation, full-width forms
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def detect_lang(text: str) -> str:
    """"zh" when the text holds any CJK character, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def _read_categories(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: categories file does not exist") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: categories file is not UTF-8 ({e})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of category name -> [first_line, last_line], "
                         f"got {type(data).__name__}")
    return data


def _ranges(path: Path, data: dict) -> dict[str, tuple[int, int]]:
    ranges: dict[str, tuple[int, int]] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name not in OFFICIAL_CATEGORIES:
            raise InputError(f"{path}: unknown category {key!r}; "
                             f"the 11 categories are {', '.join(OFFICIAL_CATEGORIES)}")
        if name in ranges:
            raise InputError(f"{path}: category {name!r} given twice (as {key!r})")
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise InputError(f"{path}: category {key!r}: expected [first_line, last_line] (two integers), "
                             f"got {value!r}")
        first, last = value
        if first < 1 or last < first:
            raise InputError(f"{path}: category {key!r}: bad range [{first}, {last}] "
                             f"(lines are 1-based, first <= last)")
        ranges[name] = (first, last)
    missing = [c for c in OFFICIAL_CATEGORIES if c not in ranges]
    if missing:
        raise InputError(f"{path}: missing categories: {', '.join(missing)}")
    ordered = sorted(ranges.items(), key=lambda kv: kv[1])
    for (a, (a0, a1)), (b, (b0, b1)) in zip(ordered, ordered[1:]):
        if b0 <= a1:
            raise InputError(f"{path}: categories {a!r} [{a0}, {a1}] and {b!r} [{b0}, {b1}] overlap")
    return ranges


def load_official(prompts_file: str | os.PathLike, categories_file: str | os.PathLike) -> list[dict]:
    """Prompts of an official-format file with their categories, in file order:
    ``[{"id": "o001", "category": "Sports", "prompt": ..., "lang": "zh", "line": 1}, ...]``.

    The id is "o" + the 1-based line number, zero-padded to 3 digits. Raises ValueError naming the
    file and the line or category on any problem (see the module docstring)."""
    prompts_path, categories_path = Path(prompts_file), Path(categories_file)
    try:
        raw = prompts_path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{prompts_path}: prompts file does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{prompts_path}: line {line}: not UTF-8 (byte {e.start}: {e.reason})") from None
    text = text.removeprefix("\ufeff")  # a BOM is not part of the first prompt
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines are fine
    if not lines:
        raise InputError(f"{prompts_path}: no prompts (the file is empty)")
    ranges = _ranges(categories_path, _read_categories(categories_path))
    n = len(lines)
    for name, (first, last) in ranges.items():
        if last > n:
            raise InputError(f"{categories_path}: category {name!r} [{first}, {last}] is out of range: "
                             f"{prompts_path} has {n} prompt lines")
    owner: dict[int, str] = {i: name for name, (a, b) in ranges.items() for i in range(a, b + 1)}
    uncovered = [i for i in range(1, n + 1) if i not in owner]
    if uncovered:
        shown = ", ".join(map(str, uncovered[:10])) + (" ..." if len(uncovered) > 10 else "")
        raise InputError(f"{prompts_path}: {len(uncovered)} line(s) not covered by any category in "
                         f"{categories_path}: {shown}")
    width = max(3, len(str(n)))
    out = []
    for i, line in enumerate(lines, start=1):
        prompt = line.strip()
        if not prompt:
            raise InputError(f"{prompts_path}: line {i}: empty line inside category {owner[i]!r} "
                             f"{list(ranges[owner[i]])}")
        out.append({"id": f"o{i:0{width}d}", "category": owner[i], "prompt": prompt, "lang": detect_lang(prompt),
                    "line": i})
    return out
